"""Checkpoints: restore onto another mesh, keep-last-N plus keep-every-K, fall back past a damaged
step, and the data iterator's position as it was when the save started."""

from __future__ import annotations

import logging
import shutil

import jax
import ml_collections
import numpy as np
import pytest

from jaxvlm.train.checkpoint import Checkpoints
from jaxvlm.train.program import build
from tests.train.runs import mesh_of, standin_iterator, tiny_config


def checkpoint_config(**changes):
    c = ml_collections.ConfigDict({"every": 1, "keep_last": 2, "keep_every": 0, "async_save": True})
    c.update(changes)
    return c


@pytest.mark.slow
def test_restore_onto_a_smaller_mesh(tmp_path):
    """Saved FSDP-split over 8 devices, restored over 4 (data 2 x fsdp 2)."""
    config = tiny_config()
    big, small = build(config, mesh_of((1, 8, 1))), build(config, mesh_of((2, 2, 1)))
    state = big.init()
    iterator = standin_iterator(config)
    next(iterator)
    with Checkpoints(tmp_path, checkpoint_config()) as checkpoints:
        checkpoints.save(1, state, iterator)
    with Checkpoints(tmp_path, checkpoint_config()) as checkpoints:
        restored = checkpoints.restore(small.state.abstract, standin_iterator(config))
    for saved, loaded in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        assert np.array_equal(np.asarray(saved), np.asarray(loaded))
        assert len(loaded.sharding.device_set) == 4
    embedding = restored.params["txt"]["token_embed"]["embedding"]
    assert embedding.addressable_shards[0].data.shape == (embedding.shape[0], embedding.shape[1] // 2)


def small_state(step):
    return {"w": jax.numpy.full((4, 4), float(step)), "step": jax.numpy.asarray(step)}


def test_keep_last_n_and_every_k(tmp_path):
    config = tiny_config()
    iterator = standin_iterator(config)
    with Checkpoints(tmp_path, checkpoint_config(keep_last=2, keep_every=4)) as checkpoints:
        for step in range(1, 11):
            checkpoints.save(step, small_state(step), iterator)
        checkpoints.wait()
        assert sorted(checkpoints.steps()) == [4, 8, 9, 10]


def test_a_damaged_newest_checkpoint_falls_back(tmp_path, caplog):
    config = tiny_config()
    iterator = standin_iterator(config)
    with Checkpoints(tmp_path, checkpoint_config(keep_last=3)) as checkpoints:
        for step in (1, 2):
            checkpoints.save(step, small_state(step), iterator)
    shutil.rmtree(tmp_path / "2" / "state")
    abstract = jax.eval_shape(lambda: small_state(0))
    with caplog.at_level(logging.WARNING), Checkpoints(tmp_path, checkpoint_config()) as checkpoints:
        restored = checkpoints.restore(abstract, standin_iterator(config))
    assert int(restored["step"]) == 1
    assert "checkpoint step 2" in caplog.text and "restored checkpoint step 1 instead of the newest, 2" in caplog.text


def test_iterator_position_is_taken_when_the_save_starts(tmp_path):
    """An asynchronous save must not record where the iterator got to while it was writing."""
    config = tiny_config()
    iterator = standin_iterator(config)
    for _ in range(3):
        next(iterator)
    with Checkpoints(tmp_path, checkpoint_config()) as checkpoints:
        checkpoints.save(3, small_state(3), iterator)
        expected = next(iterator)
        for _ in range(5):
            next(iterator)
    resumed = standin_iterator(config)
    with Checkpoints(tmp_path, checkpoint_config()) as checkpoints:
        checkpoints.restore(jax.eval_shape(lambda: small_state(0)), resumed)
    assert np.array_equal(next(resumed)["image"], expected["image"])


def test_no_checkpoint_means_none(tmp_path):
    with Checkpoints(tmp_path, checkpoint_config()) as checkpoints:
        assert checkpoints.restore(small_state(0), standin_iterator(tiny_config())) is None
