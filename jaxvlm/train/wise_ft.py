"""WiSE-FT (Wortsman et al., 2022): the weights of a zero-shot model and of its fine-tuned copy,
interpolated: theta = (1 - alpha) * theta_zero_shot + alpha * theta_fine_tuned. BatchNorm's running means
and variances are interpolated the same way, linearly, as the WiSE-FT reference implementation does with
every entry of the two state dicts (buffers included)."""

from __future__ import annotations

from pathlib import Path

import flax
import numpy as np

from jaxvlm import model_dir
from jaxvlm.errors import InputError


def interpolate(zero_shot: Path, fine_tuned: Path, alpha: float, out: Path) -> None:
    """Writes the model directory ``out``: architecture, preprocessing and tokenizer of the two
    (which must agree), parameters interpolated with ``alpha`` in [0, 1] (0: the zero-shot model)."""
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"--alpha must be in [0, 1], got {alpha}")
    model_dir.check_output_dir(Path(out))
    a, b = model_dir.load(Path(zero_shot)), model_dir.load(Path(fine_tuned))
    differences = _differences(_described(a), _described(b), "")
    if differences:
        raise InputError(
            f"{zero_shot} and {fine_tuned} differ in their config ({'; '.join(differences)}): "
            "WiSE-FT needs two copies of one model"
        )
    mix = lambda tree_a, tree_b, what: _mix(tree_a, tree_b, alpha, what, (zero_shot, fine_tuned))
    params, batch_stats = mix(a.params, b.params, "parameter"), mix(a.batch_stats, b.batch_stats, "batch statistic")
    provenance = {
        "source": "jaxvlm wise-ft",
        "zero_shot": str(zero_shot),
        "fine_tuned": str(fine_tuned),
        "alpha": alpha,
        "zero_shot_provenance": a.provenance,
        "fine_tuned_provenance": b.provenance,
    }
    result = model_dir.ModelDir(b.config, b.preprocess, b.tokenizer, provenance, params, batch_stats=batch_stats)
    model_dir.save(Path(out), result, Path(fine_tuned) / b.tokenizer.file)


def _mix(a: dict, b: dict, alpha: float, what: str, paths: tuple[Path, Path]) -> dict:
    """(1 - alpha) * a + alpha * b, leaf by leaf (in float64, stored as float32)."""
    flat_a = flax.traverse_util.flatten_dict(a, sep="/")
    flat_b = flax.traverse_util.flatten_dict(b, sep="/")
    only_one = sorted(set(flat_a) ^ set(flat_b))
    if only_one:
        raise InputError(f"{what} {only_one[0]} is in only one of {paths[0]} and {paths[1]}")
    mixed = {}
    for name, value in flat_a.items():
        if value.shape != flat_b[name].shape:
            raise InputError(
                f"{what} {name} has shape {value.shape} in {paths[0]} and {flat_b[name].shape} in {paths[1]}"
            )
        mixed[name] = ((1.0 - alpha) * value.astype(np.float64) + alpha * flat_b[name].astype(np.float64)).astype(
            np.float32
        )
    return flax.traverse_util.unflatten_dict(mixed, sep="/")


def _described(model: model_dir.ModelDir) -> dict:
    """What a model is, keyed as in config.json: architecture, preprocessing, tokenizer."""
    return {
        "model": model.config.to_dict(),
        "preprocess": model.preprocess.to_dict(),
        "tokenizer": model.tokenizer.to_dict(),
    }


def _differences(a: object, b: object, key: str) -> list[str]:
    """'key: a vs b' for every dotted key whose values differ between two nested dicts."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(a.keys() | b.keys()) for d in _differences(a.get(k), b.get(k), f"{key}{k}.")]
    return [] if a == b else [f"{key[:-1]}: {a!r} vs {b!r}"]
