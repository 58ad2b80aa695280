"""Where a run's numbers go: a JSONL log (one object per logged step), TensorBoard event files
(written with tensorboard's own writer, which needs no TensorFlow), a PNG of the loss, learning
rate and accuracy curves, and a progress line. Only process 0 writes."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
CURVES_FILE = "curves.png"


class MetricsLog:
    """Appends to ``workdir/metrics.jsonl`` and ``workdir/tensorboard``. A run resumed at step s
    first drops the lines after s, which the interrupted run had logged and this one redoes."""

    def __init__(self, workdir: Path, resume_step: int):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.path = Path(workdir) / METRICS_FILE
        self._drop_after(resume_step)
        self._file = self.path.open("a")
        self._events = EventFileWriter(str(Path(workdir) / TENSORBOARD_DIR), flush_secs=10)

    def _drop_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = [line for line in read(self.path) if line["step"] <= step]
        tmp = self.path.with_name(f".{self.path.name}.partial")
        tmp.write_text("".join(json.dumps(line) + "\n" for line in kept))
        os.replace(tmp, self.path)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        self._file.write(json.dumps({"step": step, **metrics}) + "\n")
        self._file.flush()
        values = [summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in metrics.items()]
        self._events.add_event(
            event_pb2.Event(wall_time=time.time(), step=step, summary=summary_pb2.Summary(value=values))
        )

    def close(self) -> None:
        self._file.close()
        self._events.close()


def read(path: Path) -> list[dict]:
    """The logged lines of a metrics file (a line cut short by a crash is ignored)."""
    lines = []
    for text in Path(path).read_text().splitlines():
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            continue
    return lines


def plot(metrics_path: Path, out: Path) -> None:
    """Loss, learning-rate and accuracy curves (train and evaluation) of a metrics file as a PNG.
    Drawn with matplotlib's object API: pyplot's global backend (a notebook's) stays as it was."""
    from matplotlib.figure import Figure

    lines = read(metrics_path)
    panels = {
        "loss": lambda k: k.endswith("loss"),
        "learning rate": lambda k: k == "lr",
        "accuracy": lambda k: "acc" in k,
    }
    fig = Figure(figsize=(5 * len(panels), 3.6))
    axes = fig.subplots(1, len(panels))
    for ax, (title, wanted) in zip(axes, panels.items()):
        keys = sorted({k for line in lines for k in line if k != "step" and wanted(k)})
        for key in keys:
            points = [(line["step"], line[key]) for line in lines if key in line and math.isfinite(line[key])]
            if points:
                ax.plot(*zip(*points), label=key, marker="o" if len(points) < 3 else None)
        ax.set_title(title)
        ax.set_xlabel("step")
        if len(keys) > 1:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.partial.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, out)


class Progress:
    """A progress bar on a terminal (steps, images/s, loss, ETA), and one line per logged step."""

    def __init__(self, total: int, start: int, batch_size: int):
        from tqdm import tqdm

        self._bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, disable=not sys.stderr.isatty())
        self._batch_size = batch_size
        self._last = (start, time.perf_counter())

    def update(self, step: int, loss: float | None = None) -> None:
        self._bar.update(step - self._bar.n)
        if loss is not None:
            self._bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def log(self, step: int, metrics: dict[str, float]) -> float:
        """Prints the logged metrics; returns the images per second since the last call."""
        now = time.perf_counter()
        last_step, last_time = self._last
        rate = (step - last_step) * self._batch_size / max(now - last_time, 1e-9)
        self._last = (step, now)
        self._bar.set_postfix({"loss": f"{metrics['loss']:.4f}", "img/s": f"{rate:.0f}"})
        shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        self.write(f"step {step}/{self._bar.total}  {shown}  {rate:.0f} img/s")
        return rate

    def write(self, line: str) -> None:
        self._bar.write(line, file=sys.stdout)
        sys.stdout.flush()

    def close(self) -> None:
        self._bar.close()
