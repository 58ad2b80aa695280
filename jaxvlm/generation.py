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

import jax
import jax.numpy as jnp
import numpy as np

from jaxvlm.errors import InputError
from jaxvlm.models.coca import CoCa, empty_cache, reorder_cache
from jaxvlm.models.config import ModelConfig

METHODS = ("greedy", "beam", "sample")


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    method: str = "beam"  # greedy | beam | sample
    num_beams: int = 4  # beam search only
    max_len: int = 30  # most tokens generated after the start token, end token included
    min_len: int = 5  # fewest tokens generated before the end token may come
    temperature: float = 1.0  # sampling only, as are top_k and top_p
    top_k: int = 0  # keep the k most likely tokens; 0 keeps all
    top_p: float = 1.0  # keep the smallest set of tokens whose probability reaches top_p
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the sequence (CTRL / HF rule)
    length_penalty: float = 1.0
    seed: int = 0

    def validate(self, model: ModelConfig) -> "GenerationConfig":
        """Raises InputError for options out of range, before anything is compiled."""
        if model.decoder is None:
            raise InputError("generation needs a CoCa model (this model has no caption decoder)")
        if self.method not in METHODS:
            raise InputError(f"method {self.method!r} is not one of {', '.join(METHODS)}")
        positions = min(model.decoder.context_length, model.text.context_length)
        _check_int("max_len", self.max_len, 1, positions)
        _check_int("min_len", self.min_len, 0, self.max_len)
        _check_int("num_beams", self.num_beams, 1, model.decoder.vocab_size // 2)
        _check_int("top_k", self.top_k, 0, model.decoder.vocab_size)
        _check_int("seed", self.seed, 0, 2**32 - 1)
        if not 0.0 < self.top_p <= 1.0:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        if not self.temperature > 0.0:
            raise InputError(f"temperature must be > 0, got {self.temperature}")
        if not self.repetition_penalty > 0.0:
            raise InputError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if not np.isfinite(self.length_penalty):
            raise InputError(f"length_penalty must be finite, got {self.length_penalty}")
        return self

    @property
    def num_returned(self) -> int:
        return self.num_beams if self.method == "beam" else 1


def _check_int(name: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise InputError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


def generator(module: CoCa, cfg: GenerationConfig, pad_id: int):
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


def _start(model: ModelConfig, rows: int, length: int, pad_id: int):
    ids = jnp.full((rows, length), pad_id, jnp.int32).at[:, 0].set(model.decoder.sot_id)
    return ids, empty_cache(model, rows, length, jnp.dtype(model.dtype))


def _sample(decode, model: ModelConfig, cfg: GenerationConfig, image_tokens, pad_id, rng):
    """Greedy (argmax) or sampled decoding, one sequence per image."""
    eot = model.decoder.eot_id
    rows = image_tokens.shape[0]
    ids, cache = _start(model, rows, cfg.max_len + 1, pad_id)
    logits, cache = decode(ids, 0, cache, image_tokens)

    def choose(state, logits):
        ids, _, done, score, length, index, rng = state
        logits = _process(logits, ids, index, cfg, eot)
        if cfg.method == "greedy":
            token = jnp.argmax(logits, axis=-1)
        else:
            logits = _sampling_filter(logits, cfg)
            rng, key = jax.random.split(rng)
            token = jax.random.categorical(key, logits, axis=-1)
        logprob = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), token[:, None], axis=-1)[:, 0]
        token = jnp.where(done, pad_id, token)
        score = score + jnp.where(done, 0.0, logprob)
        length = length + (~done).astype(jnp.int32)
        ids = ids.at[:, index + 1].set(token)
        return ids, state[1], done | (token == eot), score, length, index + 1, rng

    def step(state):
        logits, cache = decode(state[0], state[5], state[1])
        return choose((state[0], cache, *state[2:]), logits)

    zeros = jnp.zeros((rows,), jnp.float32)
    state = choose((ids, cache, zeros.astype(bool), zeros, zeros.astype(jnp.int32), 0, rng), logits)
    ids, _, _, score, length, _, _ = jax.lax.while_loop(
        lambda s: (s[5] < cfg.max_len) & ~jnp.all(s[2]), step, state)
    return ids[:, None, 1:], _normalise(score, length, cfg)[:, None]


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
    ids, cache = _start(model, batch * k, length, pad_id)
    # all beams start as the same sequence: only the first may extend it, or the k would be equal
    alive = jnp.tile(jnp.where(jnp.arange(k) == 0, 0.0, -jnp.inf), (batch, 1))
    finished_ids = jnp.full((batch, k, length), pad_id, jnp.int32)
    finished = jnp.full((batch, k), -jnp.inf)
    logits, cache = decode(ids, 0, cache, image_tokens)

    def choose(state, logits):
        ids, cache, alive, finished_ids, finished, index = state
        vocab = logits.shape[-1]
        logprobs = jax.nn.log_softmax(_process(logits, ids, index, cfg, eot), axis=-1)
        candidates = (alive[:, :, None] + logprobs.reshape(batch, k, vocab)).reshape(batch, k * vocab)
        scores, flat = jax.lax.top_k(candidates, 2 * k)
        parent, token = flat // vocab, flat % vocab
        candidate_ids = jnp.take_along_axis(ids.reshape(batch, k, length), parent[:, :, None], axis=1)
        candidate_ids = candidate_ids.at[:, :, index + 1].set(token)
        ends = token == eot
        # as in fairseq, an ended candidate counts only if it ranks among the best k, so that
        # one beam is greedy decoding
        admitted = ends & (jnp.arange(2 * k) < k)
        pool_ids = jnp.concatenate([finished_ids, candidate_ids], axis=1)
        pool = jnp.concatenate([finished, jnp.where(admitted, _normalise(scores, index + 1, cfg), -jnp.inf)], axis=1)
        finished, best = jax.lax.top_k(pool, k)
        finished_ids = jnp.take_along_axis(pool_ids, best[:, :, None], axis=1)
        alive, keep = jax.lax.top_k(jnp.where(ends, -jnp.inf, scores), k)
        ids = jnp.take_along_axis(candidate_ids, keep[:, :, None], axis=1).reshape(batch * k, length)
        rows = (jnp.take_along_axis(parent, keep, axis=1) + k * jnp.arange(batch)[:, None]).reshape(-1)
        return ids, reorder_cache(cache, rows), alive, finished_ids, finished, index + 1

    def running(state):
        _, _, alive, _, finished, index = state
        # alive scores only fall; the best a continuation can reach is at the longest (lp >= 0)
        # or shortest (lp < 0) length still possible
        bound = _normalise(alive[:, 0], cfg.max_len if cfg.length_penalty >= 0 else index + 1, cfg)
        return (index < cfg.max_len) & ~jnp.all(bound <= finished[:, -1])

    def step(state):
        logits, cache = decode(state[0], state[5], state[1])
        return choose((state[0], cache, *state[2:]), logits)

    state = choose((ids, cache, alive, finished_ids, finished, 0), logits)
    ids, _, alive, finished_ids, finished, _ = jax.lax.while_loop(running, step, state)
    # sequences that never ended compete at full length
    pool_ids = jnp.concatenate([finished_ids, ids.reshape(batch, k, length)], axis=1)
    pool = jnp.concatenate([finished, _normalise(alive, cfg.max_len, cfg)], axis=1)
    scores, best = jax.lax.top_k(pool, k)
    return jnp.take_along_axis(pool_ids, best[:, :, None], axis=1)[:, :, 1:], scores
