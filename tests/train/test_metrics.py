"""The metrics log: JSONL with resume truncation, TensorBoard events readable by TensorBoard,
and the curves PNG."""

from __future__ import annotations

from PIL import Image

from jaxvlm.train.metrics import MetricsLog, plot, read


def test_jsonl_tensorboard_and_curves(tmp_path):
    log = MetricsLog(tmp_path, resume_step=0)
    for step in range(1, 7):
        log.write(step, {"loss": 3.0 / step, "lr": 0.1 * step, "batch_accuracy": step / 10})
    log.write(6, {"digits/acc1": 0.9})
    log.close()
    assert [line["step"] for line in read(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6, 6]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert {"loss", "lr", "batch_accuracy", "digits/acc1"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4, 5, 6]
    assert abs(events.Scalars("loss")[2].value - 1.0) < 1e-6

    plot(tmp_path / "metrics.jsonl", tmp_path / "curves.png")
    assert Image.open(tmp_path / "curves.png").size[0] > 1000

    resumed = MetricsLog(tmp_path, resume_step=4)  # steps 5 and 6 will be redone
    resumed.write(5, {"loss": 0.5})
    resumed.close()
    assert [line["step"] for line in read(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5]


def test_a_line_cut_short_by_a_crash_is_ignored(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    assert read(tmp_path / "metrics.jsonl") == [{"step": 1, "loss": 2.0}]
