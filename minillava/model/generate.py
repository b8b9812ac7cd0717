"""Generation: prefill the prompt once, then one token at a time with the KV cache.

    logits = step(prompt, image_features, cache)        # prefill: fills the cache, [B, V] for the last position
    repeat:
        scores = repetition penalty, temperature, top-k, top-p (logits)
        token  = argmax(scores)  or  a draw from softmax(scores)
        stop a row at EOS (it then emits pad tokens), stop all when every row has ended
        logits = step(token, cache)                     # decode step: one new position per row

The loop is written here once, for any model: it takes the model's *step function*
(``LlavaModel.step``: new token ids, attention mask, positions and the cache in, the logits of each row's
last position out) and keeps its own bookkeeping. Turning the tokens into text as they come is the
processor's job (``LlavaProcessor.stream_text``).

The logits processors follow Transformers' (RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
TopKLogitsWarper, TopPLogitsWarper) in the same order, so greedy output is token for token
Transformers' ``generate()``, and a sampled step draws from the same distribution.

Shape letters: B = batch, T = prompt length, V = vocab, S = tokens so far (prompt + generated).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import backend
from .layers import softmax

# ---------------------------------------------------------------------------------------------
# Logits processors: scores [B, V] -> scores [B, V], removed tokens set to -inf
# ---------------------------------------------------------------------------------------------


def apply_repetition_penalty(scores, sequences, penalty):
    """CTRL's repetition penalty (Keskar et al. 2019): every token already in the row (prompt included)
    has its score divided by ``penalty`` when positive, multiplied when negative.

    scores: [B, V], sequences: [B, S] token ids  ->  [B, V]
    """
    if penalty == 1.0:
        return scores
    xp = backend.xp_of(scores)
    rows = xp.arange(scores.shape[0])[:, None]  # [B, 1]
    seen = xp.asarray(sequences)  # [B, S]
    seen_scores = scores[rows, seen]  # [B, S]
    penalized = xp.where(seen_scores < 0, seen_scores * penalty, seen_scores / penalty)  # [B, S]
    scores = scores.copy()
    scores[rows, seen] = penalized  # a token seen twice gets the same value twice
    return scores


def apply_temperature(scores, temperature):
    """Divide by the temperature: < 1 sharpens the distribution, > 1 flattens it.  [B, V] -> [B, V]"""
    return scores if temperature == 1.0 else scores / temperature


def apply_top_k(scores, top_k):
    """Keep the ``top_k`` highest scores of each row (ties with the k-th are kept).  [B, V] -> [B, V]"""
    xp = backend.xp_of(scores)
    if not top_k or top_k >= scores.shape[-1]:
        return scores
    kth_best = xp.sort(scores, axis=-1)[:, -top_k][:, None]  # [B, 1]
    return xp.where(scores < kth_best, -xp.inf, scores)


def apply_top_p(scores, top_p):
    """Nucleus sampling (Holtzman et al. 2019): keep the smallest set of most probable tokens whose
    probabilities add up to at least ``top_p``; the most probable token is always kept.  [B, V] -> [B, V]

    Sorted ascending, a token is removed when the probability mass of it and everything below it is
    at most 1 - top_p (Transformers' TopPLogitsWarper).
    """
    if top_p >= 1.0:
        return scores
    xp = backend.xp_of(scores)
    order = xp.argsort(scores, axis=-1)  # [B, V] ascending
    rows = xp.arange(scores.shape[0])[:, None]  # [B, 1]
    cumulative = xp.cumsum(softmax(scores[rows, order], axis=-1), axis=-1)  # [B, V]
    remove_sorted = cumulative <= 1.0 - top_p  # [B, V]
    remove_sorted[:, -1] = False  # keep at least the best token
    remove = xp.zeros_like(remove_sorted)
    remove[rows, order] = remove_sorted  # back to vocabulary order
    return xp.where(remove, -xp.inf, scores)


def process_logits(logits, sequences, do_sample, temperature=1.0, top_k=50, top_p=1.0, repetition_penalty=1.0):
    """All processors in Transformers' order; the sampling warpers only when sampling.  [B, V] -> [B, V] float32"""
    xp = backend.xp_of(logits)
    scores = logits.astype(xp.float32)  # Transformers upcasts the last step's logits to float32
    scores = apply_repetition_penalty(scores, sequences, repetition_penalty)
    if do_sample:
        scores = apply_temperature(scores, temperature)
        scores = apply_top_k(scores, top_k)
        scores = apply_top_p(scores, top_p)
    return scores


def sample(scores, rng):
    """One draw per row from softmax(scores), by inverting the cumulative distribution.  [B, V] -> [B]

    The draw is made on the host with NumPy's generator, so a seed gives the same tokens on CPU and GPU.
    """
    probs = backend.to_numpy(softmax(scores, axis=-1)).astype(np.float64)  # [B, V]
    cumulative = np.cumsum(probs, axis=-1)  # [B, V]
    u = rng.random(probs.shape[0]) * cumulative[:, -1]  # [B] uniform in [0, total)
    tokens = (cumulative <= u[:, None]).sum(axis=-1)  # [B] first index whose cumulative mass exceeds u
    return np.minimum(tokens, probs.shape[1] - 1)  # guard against u == total after rounding


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


# The generation settings and their defaults (Transformers' GenerationConfig defaults): greedy unless do_sample.
SETTINGS_DEFAULTS = {
    "max_new_tokens": 20,
    "do_sample": False,
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
    "repetition_penalty": 1.0,
}


@dataclass(frozen=True)
class GenerationDefaults:
    """The special tokens generation needs when the caller names none: the end-of-sequence id(s) that stop a
    row, the id a finished row emits from then on, and the beginning-of-sequence id."""

    eos_token_id: tuple[int, ...]
    pad_token_id: int | None
    bos_token_id: int | None


def generation_defaults(config, generation_config: dict | None = None) -> GenerationDefaults:
    """EOS, pad and BOS ids as Transformers' generate() takes them: a checkpoint's generation_config.json
    first (what save_pretrained writes beside config.json; ``generation_config`` is its parsed content),
    then the language model's config and the llava config's (``config``, a LlavaConfig)."""
    data = generation_config or {}
    eos = data.get("eos_token_id", config.text.eos_token_id)
    eos = () if eos is None else (eos,) if isinstance(eos, int) else tuple(eos)
    pad = data.get("pad_token_id", config.pad_token_id if config.pad_token_id is not None else config.text.pad_token_id)
    bos = data.get("bos_token_id", config.text.bos_token_id)
    return GenerationDefaults(eos_token_id=eos, pad_token_id=pad, bos_token_id=bos)


def check_generation_args(max_new_tokens, do_sample, temperature, top_k, top_p, repetition_penalty, seed=None):
    """One clear error per bad argument, before any compute (the model's generate calls it)."""

    def integer(value):  # True and False are ints to Python, never a count of tokens here
        return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))

    def number(value):
        return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))

    if not integer(max_new_tokens) or max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if not isinstance(do_sample, (bool, np.bool_)):
        raise ValueError(f"do_sample must be True or False, got {do_sample!r}")
    if not number(temperature) or (do_sample and not temperature > 0):
        raise ValueError(f"temperature must be a number (> 0 when sampling, do_sample=True), got {temperature!r}")
    if top_k is not None and (not integer(top_k) or top_k < 0):
        raise ValueError(f"top_k must be a non-negative integer (0 or None: no top-k), got {top_k!r}")
    if not number(top_p) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must be a number in (0, 1], got {top_p!r}")
    if not number(repetition_penalty) or not repetition_penalty > 0:
        raise ValueError(f"repetition_penalty must be a number > 0, got {repetition_penalty!r}")
    if seed is not None and (not integer(seed) or seed < 0):  # NumPy's generators take non-negative seeds only
        raise ValueError(f"seed must be None or a non-negative integer, got {seed!r}")


def check_finite_logits(logits, step_index: int) -> None:
    """NaN or infinite logits choose no token (argmax of NaN is an arbitrary id, and sampling fails): say why, once,
    instead of answering with garbage. Finite weights and inputs never give them in float32; non-finite weights
    (load_model(..., strict=True) names them) or a float16 overflow do.  logits: [B, V]"""
    xp = backend.xp_of(logits)
    if bool(xp.isfinite(logits).all()):  # one value to the host per step; the rows are found only on failure
        return
    bad_rows = backend.to_numpy(~xp.isfinite(logits).all(axis=-1))  # [B]
    where = "the prompt's last position" if step_index == 0 else f"generation step {step_index}"
    raise ValueError(
        f"the logits at {where} are NaN or infinite (rows {np.flatnonzero(bad_rows).tolist()}): no token can be "
        "chosen. The weights hold non-finite values (load_model(..., strict=True) names them) or float16 "
        "overflowed (try dtype='float32')"
    )


def as_id_set(eos_token_id) -> tuple[int, ...]:
    """An EOS setting (None, an int or a list of ints) as a tuple of ids."""
    if eos_token_id is None:
        return ()
    if isinstance(eos_token_id, (int, np.integer)):
        return (int(eos_token_id),)
    return tuple(int(i) for i in eos_token_id)


def generate_tokens(
    step,
    cache,
    input_ids,
    attention_mask,
    image_features=None,
    *,
    max_new_tokens,
    do_sample,
    temperature,
    top_k,
    top_p,
    repetition_penalty,
    seed=None,
    eos_token_id=(),
    pad_token_id=None,
):
    """Yield the next token of every row, [B] int64 NumPy, step by step (a generator).

    step: the model's step function, ``step(ids [B, T], attention_mask [B, Tk], position_ids [B, T], cache,
    image_features=None) -> logits of each row's last position [B, V]``; it writes the new keys and values
    into ``cache`` (an empty KVCache with room for the prompt and every new token: the loop stops when it is
    full). input_ids, attention_mask: the prompt [B, T] (NumPy int64, checked by the caller); image_features:
    what the prompt's image tokens become (the model's encode_image), used by the prefill only. The settings
    are those of ``SETTINGS_DEFAULTS`` (checked by ``check_generation_args``), a seed for sampling, and the
    EOS id(s) and pad id (``GenerationDefaults``).

    A row that has produced an EOS token yields ``pad_token_id`` from then on; the generator stops when
    every row has ended, after ``max_new_tokens`` steps, or when the cache is full. Position ids follow
    Transformers' generate: ``cumsum(attention_mask) - 1``, 0 at padding, so a left-padded row starts at
    position 0 at its first real token.
    """
    # The loop's bookkeeping (token ids, attention mask, positions: a few integers per row) lives on the
    # host in NumPy by design; all model math runs in the step function, on the model's device.
    B, T = input_ids.shape
    eos = as_id_set(eos_token_id)
    if pad_token_id is None:
        pad_token_id = eos[0] if eos else 0
    rng = np.random.default_rng(seed)
    n_steps = min(max_new_tokens, cache.max_len - T)

    position_ids = np.where(attention_mask == 1, np.cumsum(attention_mask, axis=1) - 1, 0)  # [B, T]
    logits = step(input_ids, attention_mask, position_ids, cache, image_features)  # prefill: [B, V]
    sequences = input_ids  # [B, S], for the repetition penalty
    unfinished = np.ones(B, dtype=bool)
    for i in range(n_steps):
        check_finite_logits(logits, i)
        scores = process_logits(logits, sequences, do_sample, temperature, top_k, top_p, repetition_penalty)  # [B, V]
        if do_sample:
            next_tokens = sample(scores, rng)  # [B]
        else:
            next_tokens = backend.to_numpy(scores.argmax(axis=-1))  # [B]
        next_tokens = np.where(unfinished, next_tokens, pad_token_id).astype(np.int64)
        yield next_tokens
        unfinished &= ~np.isin(next_tokens, eos)
        if not unfinished.any() or i == n_steps - 1:
            return
        sequences = np.concatenate([sequences, next_tokens[:, None]], axis=1)  # [B, S + 1]
        attention_mask = np.concatenate([attention_mask, np.ones((B, 1), np.int64)], axis=1)  # [B, S + 1]
        position_ids = position_ids[:, -1:] + 1  # [B, 1]
        logits = step(next_tokens[:, None], attention_mask, position_ids, cache)  # decode: [B, V]
