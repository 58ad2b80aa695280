"""Blockwise recall@k against plain numpy on fixed random embeddings."""

import jax
import numpy as np
import pytest

from jaxvlm.errors import InputError
from jaxvlm.eval import retrieval_metrics, top_k_indices
from jaxvlm.eval.retrieval import local_mesh


def embeddings(n_images, captions_per_image, dim=16, seed=0):
    """Small-integer embeddings, captions near their image (so recall is neither 0 nor 1). Their
    dot products are exact in float32, so float32 and float64 rank alike, ties included."""
    rng = np.random.default_rng(seed)
    images = rng.integers(-4, 5, size=(n_images, dim))
    text_image = np.repeat(np.arange(n_images), captions_per_image)
    rng.shuffle(text_image)
    texts = images[text_image] + rng.integers(-5, 6, size=(len(text_image), dim))
    return images.astype(np.float32), texts.astype(np.float32), text_image


def numpy_recalls(images, texts, text_image, ks):
    """Full similarity matrix, full stable argsort (ties: the lower index first), in float64."""
    scores = images.astype(np.float64) @ texts.astype(np.float64).T  # [N, M]
    texts_ranked = np.argsort(-scores, axis=1, kind="stable")
    images_ranked = np.argsort(-scores.T, axis=1, kind="stable")
    out = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = float(
            np.mean([text_image[j] in images_ranked[j, :k] for j in range(len(texts))])
        )
        out[f"text_retrieval_recall@{k}"] = float(
            np.mean([np.any(text_image[texts_ranked[i, :k]] == i) for i in range(len(images))])
        )
    return out


@pytest.mark.parametrize("n_images, captions, block", [(200, 5, 64), (97, 3, 16), (7, 2, 4096)])
def test_equal_to_numpy(n_images, captions, block):
    images, texts, text_image = embeddings(n_images, captions)
    ks = (1, 5, 10)
    got = retrieval_metrics(images, texts, text_image, ks, block_size=block)
    expected = numpy_recalls(images, texts, text_image, ks)
    print({k: (got[k], expected[k]) for k in got})
    assert got == expected  # exactly
    assert 0 < got["image_retrieval_recall@1"] < got["image_retrieval_recall@10"] or n_images < 10


def test_blocks_and_devices_never_change_the_neighbours():
    images, texts, _ = embeddings(300, 4, seed=1)
    reference = top_k_indices(texts, images, 10, block_size=4096)
    one_device = local_mesh(jax.local_devices()[:1])
    for block in (13, 64):  # blocks that divide neither the queries nor the candidates
        np.testing.assert_array_equal(top_k_indices(texts, images, 10, block_size=block), reference)
        np.testing.assert_array_equal(top_k_indices(texts, images, 10, block_size=block, mesh=one_device), reference)
    order = np.argsort(-(texts.astype(np.float64) @ images.T.astype(np.float64)), axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(reference, order)


def test_ties_keep_the_lower_index_as_a_stable_sort_does():
    candidates = np.array([[1, 0], [0, 1], [1, 0], [1, 0], [0, 1]], np.float32)
    found = top_k_indices(np.array([[1, 0]], np.float32), candidates, 4, block_size=2)
    np.testing.assert_array_equal(found, [[0, 2, 3, 1]])


def test_k_above_the_candidate_count():
    images, texts, text_image = embeddings(3, 2)
    metrics = retrieval_metrics(images, texts, text_image, (1, 10))
    assert metrics["image_retrieval_recall@10"] == metrics["text_retrieval_recall@10"] == 1.0


@pytest.mark.parametrize(
    "args, words",
    [
        ((np.zeros((3, 4)), np.zeros((2, 5)), np.zeros(2, int)), "embeddings"),
        ((np.zeros((3, 4)), np.zeros((2, 4)), np.zeros(3, int)), "one image index per text"),
        ((np.zeros((3, 4)), np.zeros((2, 4)), np.array([0, 3])), "text_image indices"),
    ],
)
def test_bad_input(args, words):
    with pytest.raises(InputError, match=words):
        retrieval_metrics(*args)
