"""docs/reliability.md and the merged records it is rendered from (docs/reliability.json): where
they are, the areas of its table, and the rendering."""

from __future__ import annotations

from tests.paths import REPO

RESULTS = REPO / "docs" / "reliability.json"


TABLE = REPO / "docs" / "reliability.md"

AREAS = ("Faults", "Bad inputs", "Security")


def render(results: dict) -> str:
    lines = [
        "# Reliability",
        "",
        "Produced by the fault and bad-input suite (`tests/faults/`): `make test` runs the quick cases,",
        "`make test-faults` the slow ones (20 kill points, the fuzzers at full length, disk full, a lost",
        "process). Every row is written by the case that measured it (`record(...)` in the tests),",
        "merged over runs in `docs/reliability.json`; **holds** is whether that case passed.",
        "",
    ]
    by_area = {area: [] for area in AREAS}
    for nodeid, entry in results.items():
        name = nodeid.split("::", 1)[1]
        holds = "yes" if entry["status"] == "passed" else entry["status"].upper()
        for row in entry["rows"] or [{"area": "Faults", "case": name, "tried": "", "outcome": "(no record)"}]:
            by_area[row["area"]].append((row, holds, entry["date"], name))
    for area, rows in by_area.items():
        if not rows:
            continue
        lines += [
            f"## {area}",
            "",
            "| fault / input | tried | outcome | holds | case (run on) |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {_cell(row['case'])} | {_cell(row['tried'])} | {_cell(row['outcome'])} | {holds} | `{name}` ({date}) |"
            for row, holds, date, name in rows
        ]
        lines.append("")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
