"""Pictures of evaluation results: a confusion matrix for classification and a grid of top-k
retrieval hits. Figures are built with matplotlib's object API (no pyplot, no global backend),
so a notebook displays them and `save` writes them as PNG without touching the caller's state.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from jaxvlm.errors import InputError
from jaxvlm.preprocess import PreprocessConfig

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Up to this many classes the matrix is drawn with class names, and up to ANNOTATED_CLASSES
# with the count in every cell; above, a heat map of rows normalised to per-class recall.
NAMED_CLASSES = 40
ANNOTATED_CLASSES = 15


def confusion_matrix(labels: ArrayLike, predictions: ArrayLike, num_classes: int) -> np.ndarray:
    """int64 [C, C]: entry (i, j) counts examples of class i predicted as class j."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if labels.shape != predictions.shape or labels.ndim != 1:
        raise InputError(
            f"confusion matrix needs labels and predictions of one shape [N], got {labels.shape} "
            f"and {predictions.shape}"
        )
    for what, x in (("labels", labels), ("predictions", predictions)):
        if len(x) and (x.min() < 0 or x.max() >= num_classes):
            raise InputError(f"{what} must be in [0, {num_classes})")
    return (
        np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
        .reshape(num_classes, num_classes)
        .astype(np.int64)
    )


def confusion_figure(matrix: ArrayLike, class_names: Sequence[str], title: str = "") -> Figure:
    """Rows are true classes, columns predictions; colour is each row's fraction (recall on the
    diagonal), so rare and common classes read alike."""
    from matplotlib.figure import Figure

    matrix = np.asarray(matrix)
    n = len(class_names)
    if matrix.shape != (n, n):
        raise InputError(f"confusion matrix {matrix.shape} does not fit {n} class names")
    rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    side = min(max(4.0, 0.45 * n + 2.5), 16.0)
    fig = Figure(figsize=(side + 1.0, side))
    ax = fig.add_subplot()
    image = ax.imshow(rows, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if n <= NAMED_CLASSES:
        ax.set_xticks(range(n), labels=class_names, rotation=90, fontsize=8)
        ax.set_yticks(range(n), labels=class_names, fontsize=8)
    if n <= ANNOTATED_CLASSES:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(
                        j,
                        i,
                        str(matrix[i, j]),
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if rows[i, j] > 0.5 else "black",
                    )
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{title}{' — ' if title else ''}top-1 {accuracy:.1%} of {matrix.sum()}")
    fig.tight_layout()
    return fig


def retrieval_figure(
    queries: Sequence[str],
    images: Sequence[Sequence[np.ndarray]],
    correct: Sequence[Sequence[bool]] | None = None,
    scores: Sequence[Sequence[float]] | np.ndarray | None = None,
) -> Figure:
    """One row per text query: its caption, then its top-k images, best first. ``images[q][r]`` is
    an HxWx3 uint8 (or [0, 1] float) array; a ``correct`` hit is framed in green, a wrong one in
    red; ``scores[q][r]`` is printed under each image."""
    from matplotlib.figure import Figure

    if not queries or len(images) != len(queries):
        raise InputError(
            f"retrieval figure needs one row of images per query, got {len(queries)} queries and {len(images)} rows"
        )
    k = max(len(row) for row in images)
    fig = Figure(figsize=(2.0 * k + 2.6, 2.1 * len(queries)))
    grid = fig.add_gridspec(len(queries), k + 1, width_ratios=[1.3] + [1.0] * k)
    for q, query in enumerate(queries):
        ax = fig.add_subplot(grid[q, 0])
        ax.axis("off")
        ax.text(0.0, 0.5, _wrapped(query, 22), ha="left", va="center", fontsize=9, transform=ax.transAxes)
        for r, image in enumerate(images[q]):
            ax = fig.add_subplot(grid[q, r + 1])
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            if correct is not None:
                for spine in ax.spines.values():
                    spine.set_edgecolor("tab:green" if correct[q][r] else "tab:red")
                    spine.set_linewidth(3)
            if scores is not None:
                ax.set_xlabel(f"{scores[q][r]:.3f}", fontsize=8)
            if q == 0:
                ax.set_title(f"#{r + 1}", fontsize=9)
    fig.tight_layout()
    return fig


def _wrapped(text: str, width: int) -> str:
    import textwrap

    lines = textwrap.wrap(text, width) or [""]
    return "\n".join(lines[:5]) + (" …" if len(lines) > 5 else "")


def viewable(pixels: ArrayLike, preprocess: PreprocessConfig) -> np.ndarray:
    """Normalised model inputs [..., H, W, 3] back to uint8 images (undoing mean / std)."""
    pixels = np.asarray(pixels, np.float32) * np.asarray(preprocess.std, np.float32) + np.asarray(
        preprocess.mean, np.float32
    )
    return np.clip(np.round(pixels * 255.0), 0, 255).astype(np.uint8)


def save(fig: Figure, path: str | os.PathLike) -> Path:
    """Writes ``fig`` as a PNG at ``path`` through a hidden sibling renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial.png")
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
