"""The fault and bad-input suite's plumbing: the ``faults_slow`` marker (those cases run only with
``-m faults_slow``, i.e. ``make test-faults``), the ``record`` fixture through which every case
states what it injected or tried and what came of it, and the table of docs/reliability.md, which
is regenerated from those records at the end of every run that includes fault cases.

The records of all runs are merged in docs/reliability.json (a case that ran replaces its old
record), so ``make test`` (the quick cases) and ``make test-faults`` (the slow ones) together fill
the table; a case's row also says whether the case passed.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest

from tests.faults.reliability import AREAS, RESULTS, TABLE, render

HERE = Path(__file__).resolve().parent
SLOW = "faults_slow"

_rows: dict[str, list[dict]] = {}  # nodeid -> rows recorded in this run
_status: dict[str, str] = {}  # nodeid -> passed / failed / skipped
_collected: set[str] = set()


def _in_suite(item) -> bool:
    return Path(str(item.fspath)).resolve().is_relative_to(HERE)


def pytest_configure(config):
    config.addinivalue_line("markers", f"{SLOW}: the slowest fault cases, run by `make test-faults` (-m {SLOW})")


def pytest_collection_modifyitems(config, items):
    _collected.update(item.nodeid for item in items if _in_suite(item))
    if SLOW in (config.option.markexpr or ""):
        return
    slow = [item for item in items if _in_suite(item) and item.get_closest_marker(SLOW)]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if item not in slow]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if _in_suite(item) and (report.when == "call" or report.failed or report.skipped):
        if report.failed:
            _status[item.nodeid] = "failed"
        elif report.skipped:
            _status[item.nodeid] = f"skipped: {_skip_reason(report)}"
        else:
            _status.setdefault(item.nodeid, "passed")
    return report


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    return longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)


@pytest.fixture
def record(request):
    """``record(area, case, tried, outcome)`` adds a row to docs/reliability.md: the area ("Faults",
    "Bad inputs", "Security"), what was injected or tried, how many times / which inputs, and what
    happened (measured by the case, never written by hand)."""

    def add(area: str, case: str, tried: str, outcome: str) -> None:
        assert area in AREAS, area
        _rows.setdefault(request.node.nodeid, []).append(
            {"area": area, "case": case, "tried": tried, "outcome": outcome}
        )

    return add


def pytest_sessionfinish(session, exitstatus):
    if not _status:
        return
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    collected_files = {nodeid.split("::")[0] for nodeid in _collected}
    results = {
        nodeid: entry
        for nodeid, entry in results.items()
        if nodeid in _collected or nodeid.split("::")[0] not in collected_files
    }  # drop removed cases
    today = datetime.date.today().isoformat()
    for nodeid, status in _status.items():
        results[nodeid] = {"status": status, "date": today, "rows": _rows.get(nodeid, [])}
    RESULTS.write_text(json.dumps(dict(sorted(results.items())), indent=1, ensure_ascii=False) + "\n")
    TABLE.write_text(render(results))


@pytest.fixture(scope="session")
def train_data(tmp_path_factory) -> str:
    """The dataset spec of a tiny generated image-caption set (ArrayRecord, built by `jaxvlm data build`)."""
    from tests.faults.runs import build_dataset

    return build_dataset(tmp_path_factory.mktemp("faults-data"))


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, train_data):
    """An uninterrupted tiny run of `runs.STEPS` steps, to compare interrupted ones with."""
    from tests.faults import runs

    workdir = tmp_path_factory.mktemp("reference")
    done = runs.run(runs.train_args(workdir, train_data, runs.STEPS))
    assert done.process.returncode == 0, done.stderr
    return workdir


@pytest.fixture(scope="session")
def train_in_process():
    """``train(config, workdir, iterator)``: `jaxvlm.train.loop.train` with its program built on
    one device (whatever mesh the loop makes) and the programs of equal configs built (and
    compiled) once for the session."""
    import jax

    from jaxvlm import parallel
    from jaxvlm.train import loop, program

    programs = {}
    one_device = parallel.create_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])

    def cached_build(config, mesh):
        key = (
            config.model.to_json(),
            config.optimizer.to_json(),
            config.loss.to_json(),
            config.total_steps,
            config.global_batch_size,
            config.microbatches,
            config.seed,
            config.mesh.fsdp_min_size,
        )
        if key not in programs:
            programs[key] = program.build(config, one_device)
        return programs[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "build", cached_build)
        yield lambda config, workdir, iterator: loop.train(config, workdir, iterator=iterator)
