"""gcloud command lines for Cloud TPU VMs and queued resources. Pure functions: each returns the
argument list of one command, with the flags `gcloud compute tpus ... --help` documents
(gcloud 528: tpu-vm create/ssh/scp/delete, queued-resources create/describe/delete)."""

from __future__ import annotations

import dataclasses

TPUS = ("gcloud", "compute", "tpus")


@dataclasses.dataclass(frozen=True)
class Slices:
    """Where a job runs: one TPU VM slice, or a queued resource of ``num_slices`` slices (its
    nodes are then named ``{name}-0``, ``{name}-1``, ...: gcloud's --node-prefix)."""

    name: str
    zone: str
    project: str | None = None
    num_slices: int = 1
    queued: bool = False  # a queued resource (always, for several slices)

    @property
    def uses_queue(self) -> bool:
        return self.queued or self.num_slices > 1

    @property
    def nodes(self) -> list[str]:
        if self.num_slices > 1:
            return [f"{self.name}-{i}" for i in range(self.num_slices)]
        return [self.name]

    def location(self) -> list[str]:
        return [f"--zone={self.zone}"] + ([f"--project={self.project}"] if self.project else [])


def create(s: Slices, accelerator_type: str, runtime_version: str, spot: bool = False) -> list[str]:
    """``accelerator_type``: gcloud's name of one slice (v4-128, v5litepod-256, v5p-128, v6e-256)."""
    spot_flag = ["--spot"] if spot else []
    if not s.uses_queue:
        return [
            *TPUS,
            "tpu-vm",
            "create",
            s.name,
            *s.location(),
            f"--accelerator-type={accelerator_type}",
            f"--version={runtime_version}",
            *spot_flag,
        ]
    nodes = [f"--node-count={s.num_slices}", f"--node-prefix={s.name}"] if s.num_slices > 1 else [f"--node-id={s.name}"]
    return [
        *TPUS,
        "queued-resources",
        "create",
        s.name,
        *s.location(),
        f"--accelerator-type={accelerator_type}",
        f"--runtime-version={runtime_version}",
        *nodes,
        *spot_flag,
    ]


def state(s: Slices) -> list[str]:
    """Prints the queued resource's state: WAITING_FOR_RESOURCES, PROVISIONING, ACTIVE, FAILED, ..."""
    return [*TPUS, "queued-resources", "describe", s.name, *s.location(), "--format=value(state.state)"]


def copy(s: Slices, node: str, local: str, remote: str) -> list[str]:
    """Copies the file ``local`` to ``remote`` (relative to the home directory) on every worker."""
    return [*TPUS, "tpu-vm", "scp", local, f"{node}:{remote}", *s.location(), "--worker=all"]


def ssh(s: Slices, node: str, command: str, worker: str = "all") -> list[str]:
    """Runs the shell command ``command`` on ``worker`` of ``node`` ("all": every worker at once)."""
    return [*TPUS, "tpu-vm", "ssh", node, *s.location(), f"--worker={worker}", f"--command={command}"]


def delete(s: Slices) -> list[str]:
    if not s.uses_queue:
        return [*TPUS, "tpu-vm", "delete", s.name, *s.location(), "--quiet"]
    return [*TPUS, "queued-resources", "delete", s.name, *s.location(), "--force", "--quiet"]
