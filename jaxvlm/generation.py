"""CoCa caption generation: greedy, beam search, and top-k / top-p sampling with temperature.

Decoding is one jitted program per (model, options, batch shape): the image tokens and the
decoder's cross-attention keys/values are computed once, then a `lax.while_loop` feeds one
position per step through fixed-shape self-attention caches (`CoCa.decode`), stopping when
every sequence has produced the end token or ``max_len`` tokens.

Scores are sums of log-probabilities (after the repetition penalty and min-length rule) divided
by length ** length_penalty, the length counting the generated tokens including the end token,
as in HF transformers' beam search. Greedy and sampled sequences get the same kind of score.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxvlm.config_base import Config, check_choice, check_int
from jaxvlm.errors import InputError
from jaxvlm.models.coca import CoCa, empty_cache, reorder_cache
from jaxvlm.models.config import ModelConfig

METHODS = ("greedy", "beam", "sample")


@dataclasses.dataclass(frozen=True)
class GenerationConfig(Config):
    """Decoding options. Each field's ``help`` metadata is also the help of its `jaxvlm caption` and
    `jaxvlm eval` flag. The checks that need no model run on construction, the rest in `validate`."""

    name: ClassVar[str] = "generation config"

    method: str = dataclasses.field(default="beam", metadata={"help": "greedy, beam or sample"})
    num_beams: int = dataclasses.field(default=4, metadata={"help": "beams for beam search"})
    max_len: int = dataclasses.field(
        default=30, metadata={"help": "most tokens generated after the start token, end token included"}
    )
    min_len: int = dataclasses.field(default=5, metadata={"help": "fewest tokens generated before the end token"})
    temperature: float = dataclasses.field(default=1.0, metadata={"help": "sampling temperature"})
    top_k: int = dataclasses.field(
        default=0, metadata={"help": "sampling: keep the k most likely tokens (0 keeps all)"}
    )
    top_p: float = dataclasses.field(
        default=1.0, metadata={"help": "sampling: keep the smallest set of tokens with this much probability"}
    )
    repetition_penalty: float = dataclasses.field(
        default=1.0, metadata={"help": "> 1 discourages tokens already in the sequence (CTRL / HF rule)"}
    )
    length_penalty: float = dataclasses.field(
        default=1.0, metadata={"help": "sequence scores are divided by length ** this"}
    )
    seed: int = dataclasses.field(default=0, metadata={"help": "random seed for sampling"})

    def __post_init__(self) -> None:
        check_choice("method", self.method, METHODS)
        check_int("max_len", self.max_len, 1)
        check_int("min_len", self.min_len, 0, self.max_len)
        check_int("num_beams", self.num_beams, 1)
        check_int("top_k", self.top_k, 0)
        check_int("seed", self.seed, 0, 2**32 - 1)
        for field in ("temperature", "top_p", "repetition_penalty", "length_penalty"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise InputError(f"{field} must be a number, got {value!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        if not self.temperature > 0.0:
            raise InputError(f"temperature must be > 0, got {self.temperature}")
        if not self.repetition_penalty > 0.0:
            raise InputError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if not np.isfinite(self.length_penalty):
            raise InputError(f"length_penalty must be finite, got {self.length_penalty}")

    def validate(self, model: ModelConfig) -> GenerationConfig:
        """Raises InputError for options out of range for ``model``, before anything is compiled."""
        if model.decoder is None:
            raise InputError("generation needs a CoCa model (this model has no caption decoder)")
        check_int("max_len", self.max_len, 1, min(model.decoder.context_length, model.text.context_length))
        check_int("num_beams", self.num_beams, 1, model.decoder.vocab_size // 2)
        check_int("top_k", self.top_k, 0, model.decoder.vocab_size)
        return self

    @property
    def num_returned(self) -> int:
        return self.num_beams if self.method == "beam" else 1


def generator(module: CoCa, cfg: GenerationConfig, pad_id: int) -> Callable[[Any, jax.Array, jax.Array], tuple]:
    """A jitted fn(params, pixels [B, H, W, 3], rng) -> (ids [B, R, max_len] int32, scores [B, R]).

    ids are the generated tokens after the start token, ``pad_id`` after the end token; R is
    ``cfg.num_returned``, best first.
    """
    cfg.validate(module.cfg)
    search = _beam_search if cfg.method == "beam" else _sample

    def run(params, pixels, rng):
        decode = functools.partial(module.apply, {"params": params}, method=CoCa.decode)
        image_tokens = module.apply({"params": params}, pixels, method=CoCa.image_tokens)
        return search(decode, module.cfg, cfg, image_tokens, pad_id, rng)

    return jax.jit(run)


def _process(logits, ids, index, cfg: GenerationConfig, eot_id: int):
    """The repetition penalty and the min-length rule on next-token logits [R, V] at ``index``."""
    if cfg.repetition_penalty != 1.0:
        filled = (jnp.arange(ids.shape[1]) <= index).astype(jnp.int32)
        seen = jnp.zeros(logits.shape, jnp.int32).at[jnp.arange(ids.shape[0])[:, None], ids].max(filled) > 0
        penalised = jnp.where(logits < 0, logits * cfg.repetition_penalty, logits / cfg.repetition_penalty)
        logits = jnp.where(seen, penalised, logits)
    return logits.at[:, eot_id].set(jnp.where(index < cfg.min_len, -jnp.inf, logits[:, eot_id]))


def _sampling_filter(logits, cfg: GenerationConfig):
    """Temperature, then top-k, then top-p (nucleus) filtering."""
    logits = logits / cfg.temperature
    if cfg.top_k:
        kth = jax.lax.top_k(logits, cfg.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if cfg.top_p < 1.0:
        ordered = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        keep = jnp.cumsum(probs, axis=-1) - probs < cfg.top_p  # the mass before each token
        threshold = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


def _normalise(score, length, cfg: GenerationConfig):
    return score / jnp.asarray(length, jnp.float32) ** cfg.length_penalty


class _Sampling(NamedTuple):
    ids: jax.Array  # [R, max_len + 1], the start token first
    cache: dict
    index: jax.Array  # the position whose next-token logits come next
    done: jax.Array  # [R] the end token has been produced
    score: jax.Array  # [R] sum of log-probabilities
    length: jax.Array  # [R] tokens generated, end token included
    rng: jax.Array


class _Beams(NamedTuple):
    ids: jax.Array  # [B * k, max_len + 1] the alive beams
    cache: dict
    index: jax.Array
    alive: jax.Array  # [B, k] sum of log-probabilities of the alive beams, best first
    finished_ids: jax.Array  # [B, k, max_len + 1]
    finished: jax.Array  # [B, k] normalised scores of the finished sequences, best first (-inf: none)


def _start(model: ModelConfig, rows: int, length: int, pad_id: int, dtype: jnp.dtype):
    """The start tokens and empty caches (in the compute ``dtype``, that of the image tokens)."""
    ids = jnp.full((rows, length), pad_id, jnp.int32).at[:, 0].set(model.decoder.sot_id)
    return ids, empty_cache(model, rows, length, dtype)


def _decode_loop(decode, state, logits, choose, running):
    """choose(state, logits) -> state after each decoded position, while running(state)."""

    def step(state):
        logits, cache = decode(state.ids, state.index, state.cache)
        return choose(state._replace(cache=cache), logits)

    return jax.lax.while_loop(running, step, choose(state, logits))


def _sample(decode, model: ModelConfig, cfg: GenerationConfig, image_tokens, pad_id, rng):
    """Greedy (argmax) or sampled decoding, one sequence per image."""
    eot = model.decoder.eot_id
    rows = image_tokens.shape[0]
    ids, cache = _start(model, rows, cfg.max_len + 1, pad_id, image_tokens.dtype)
    logits, cache = decode(ids, 0, cache, image_tokens)

    def choose(state: _Sampling, logits) -> _Sampling:
        logits = _process(logits, state.ids, state.index, cfg, eot)
        rng = state.rng
        if cfg.method == "greedy":
            token = jnp.argmax(logits, axis=-1)
        else:
            logits = _sampling_filter(logits, cfg)
            rng, key = jax.random.split(rng)
            token = jax.random.categorical(key, logits, axis=-1)
        logprob = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), token[:, None], axis=-1)[:, 0]
        token = jnp.where(state.done, pad_id, token)
        return state._replace(
            ids=state.ids.at[:, state.index + 1].set(token),
            index=state.index + 1,
            done=state.done | (token == eot),
            score=state.score + jnp.where(state.done, 0.0, logprob),
            length=state.length + (~state.done).astype(jnp.int32),
            rng=rng,
        )

    zeros = jnp.zeros((rows,), jnp.float32)
    start = _Sampling(ids, cache, jnp.int32(0), zeros.astype(bool), zeros, zeros.astype(jnp.int32), rng)
    end = _decode_loop(decode, start, logits, choose, lambda s: (s.index < cfg.max_len) & ~jnp.all(s.done))
    return end.ids[:, None, 1:], _normalise(end.score, end.length, cfg)[:, None]


def _beam_search(decode, model: ModelConfig, cfg: GenerationConfig, image_tokens, pad_id, rng):
    """Beam search with ``num_beams`` = k beams per image: each step takes the best 2k
    continuations, moves those among the best k that end in the end token to the finished pool
    (kept to the k best by normalised score), and keeps the best k that do not end alive.
    Sequences still alive at ``max_len`` compete with the finished ones at the end.
    """
    del rng
    eot, k = model.decoder.eot_id, cfg.num_beams
    batch = image_tokens.shape[0]
    length = cfg.max_len + 1
    ids, cache = _start(model, batch * k, length, pad_id, image_tokens.dtype)
    logits, cache = decode(ids, 0, cache, image_tokens)

    def choose(state: _Beams, logits) -> _Beams:
        index, vocab = state.index, logits.shape[-1]
        logprobs = jax.nn.log_softmax(_process(logits, state.ids, index, cfg, eot), axis=-1)
        candidates = (state.alive[:, :, None] + logprobs.reshape(batch, k, vocab)).reshape(batch, k * vocab)
        scores, flat = jax.lax.top_k(candidates, 2 * k)
        parent, token = flat // vocab, flat % vocab
        candidate_ids = jnp.take_along_axis(state.ids.reshape(batch, k, length), parent[:, :, None], axis=1)
        candidate_ids = candidate_ids.at[:, :, index + 1].set(token)
        ends = token == eot
        # as in fairseq, an ended candidate counts only if it ranks among the best k, so that
        # one beam is greedy decoding
        admitted = ends & (jnp.arange(2 * k) < k)
        pool_ids = jnp.concatenate([state.finished_ids, candidate_ids], axis=1)
        pool = jnp.concatenate(
            [state.finished, jnp.where(admitted, _normalise(scores, index + 1, cfg), -jnp.inf)], axis=1
        )
        finished, best = jax.lax.top_k(pool, k)
        alive, keep = jax.lax.top_k(jnp.where(ends, -jnp.inf, scores), k)
        rows = (jnp.take_along_axis(parent, keep, axis=1) + k * jnp.arange(batch)[:, None]).reshape(-1)
        return _Beams(
            ids=jnp.take_along_axis(candidate_ids, keep[:, :, None], axis=1).reshape(batch * k, length),
            cache=reorder_cache(state.cache, rows),
            index=index + 1,
            alive=alive,
            finished_ids=jnp.take_along_axis(pool_ids, best[:, :, None], axis=1),
            finished=finished,
        )

    def running(state: _Beams):
        # alive scores only fall; the best a continuation can reach is at the longest (lp >= 0)
        # or shortest (lp < 0) length still possible
        best_length = cfg.max_len if cfg.length_penalty >= 0 else state.index + 1
        bound = _normalise(state.alive[:, 0], best_length, cfg)
        return (state.index < cfg.max_len) & ~jnp.all(bound <= state.finished[:, -1])

    # all beams start as the same sequence: only the first may extend it, or the k would be equal
    alive = jnp.tile(jnp.where(jnp.arange(k) == 0, 0.0, -jnp.inf), (batch, 1))
    start = _Beams(
        ids, cache, jnp.int32(0), alive, jnp.full((batch, k, length), pad_id, jnp.int32), jnp.full((batch, k), -jnp.inf)
    )
    end = _decode_loop(decode, start, logits, choose, running)
    # sequences that never ended compete at full length
    pool_ids = jnp.concatenate([end.finished_ids, end.ids.reshape(batch, k, length)], axis=1)
    pool = jnp.concatenate([end.finished, _normalise(end.alive, cfg.max_len, cfg)], axis=1)
    scores, best = jax.lax.top_k(pool, k)
    return jnp.take_along_axis(pool_ids, best[:, :, None], axis=1)[:, :, 1:], scores
