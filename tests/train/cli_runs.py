"""The jaxvlm CLI in subprocesses: an environment of simulated CPU devices with the test runs'
shared compilation cache, and `python -m jaxvlm.cli` run in the repository."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.paths import REPO


def run_cli(args: list[str], env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jaxvlm.cli", *args],
        env=cli_env(env),
        cwd=REPO,
        capture_output=True,
        text=True,
        **kwargs,
    )


def cli_env(extra: dict | None = None, devices: int = 8) -> dict:
    """A subprocess environment: CPU devices, and a compilation cache shared by the test runs."""
    env = dict(os.environ)
    env.update(
        {
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
            "JAX_PLATFORMS": "cpu",
            "JAX_COMPILATION_CACHE_DIR": str(REPO / ".pytest_cache" / "jax-compilation-cache"),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        }
    )
    env.update(extra or {})
    return env
