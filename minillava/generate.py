"""Generation: prefill the prompt once, then one token at a time with the KV cache.

    logits = forward(prompt, image)                     # prefill: fills the cache, [B, V] for the last position
    repeat:
        scores = repetition penalty, temperature, top-k, top-p (logits)
        token  = argmax(scores)  or  a draw from softmax(scores)
        stop a row at EOS (it then emits pad tokens), stop all when every row has ended
        logits = forward(token, cache)                  # decode step: one new position per row

The logits processors follow Transformers' (RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
TopKLogitsWarper, TopPLogitsWarper) in the same order, so greedy output is token for token
Transformers' ``generate()``, and a sampled step draws from the same distribution.

Shape letters: B = batch, T = prompt length, V = vocab, S = tokens so far (prompt + generated).
"""

from __future__ import annotations

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


def check_generation_args(max_new_tokens, do_sample, temperature, top_k, top_p, repetition_penalty):
    """One clear error per bad argument, before any compute."""
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if do_sample and not temperature > 0:
        raise ValueError(f"temperature must be > 0 when sampling (do_sample=True), got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, (int, np.integer)) or top_k < 0):
        raise ValueError(f"top_k must be a non-negative integer (0 or None: no top-k), got {top_k!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p!r}")
    if not repetition_penalty > 0:
        raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty!r}")


def _as_id_set(eos_token_id):
    if eos_token_id is None:
        return ()
    if isinstance(eos_token_id, (int, np.integer)):
        return (int(eos_token_id),)
    return tuple(int(i) for i in eos_token_id)


def generate_tokens(
    model,
    input_ids,
    pixel_values=None,
    attention_mask=None,
    *,
    max_new_tokens=20,
    do_sample=False,
    temperature=1.0,
    top_k=50,
    top_p=1.0,
    repetition_penalty=1.0,
    seed=None,
    eos_token_id=None,
    pad_token_id=None,
):
    """Yield the next token of every row, [B] int64 NumPy, step by step (a generator).

    A row that has produced an EOS token yields ``pad_token_id`` from then on; the generator stops
    when every row has ended, after ``max_new_tokens`` steps, or when the model's context is full.
    Position ids follow Transformers' generate: ``cumsum(attention_mask) - 1``, 0 at padding, so a
    left-padded row starts at position 0 at its first real token.
    """
    check_generation_args(max_new_tokens, do_sample, temperature, top_k, top_p, repetition_penalty)
    # The loop's bookkeeping (token ids, attention mask, positions: a few integers per row) lives on the
    # host in NumPy by design; all model math runs in model.forward_device on the model's device.
    input_ids = np.asarray(backend.to_numpy(input_ids))
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [B, T], got shape {list(input_ids.shape)}")
    B, T = input_ids.shape
    context = model.config.text.max_position_embeddings
    if T >= context:
        raise ValueError(
            f"the prompt has {T} tokens, the model's context (max_position_embeddings) is {context}: "
            f"no room for a new token"
        )
    eos = _as_id_set(eos_token_id)
    if pad_token_id is None:
        pad_token_id = eos[0] if eos else 0
    if attention_mask is None:
        attention_mask = np.ones((B, T), dtype=np.int64)
    attention_mask = np.asarray(backend.to_numpy(attention_mask)).astype(np.int64)
    position_ids = np.where(attention_mask == 1, np.cumsum(attention_mask, axis=1) - 1, 0)  # [B, T]
    rng = np.random.default_rng(seed)
    n_steps = min(max_new_tokens, context - T)

    cache = model.new_cache(B, T + n_steps)
    logits = model.forward_device(input_ids, pixel_values, attention_mask, position_ids, cache, last_only=True)
    sequences = input_ids  # [B, S], for the repetition penalty
    unfinished = np.ones(B, dtype=bool)
    for step in range(n_steps):
        scores = process_logits(
            logits[:, -1], sequences, do_sample, temperature, top_k, top_p, repetition_penalty
        )  # [B, V]
        if do_sample:
            next_tokens = sample(scores, rng)  # [B]
        else:
            next_tokens = backend.to_numpy(scores.argmax(axis=-1))  # [B]
        next_tokens = np.where(unfinished, next_tokens, pad_token_id).astype(np.int64)
        yield next_tokens
        unfinished &= ~np.isin(next_tokens, eos)
        if not unfinished.any() or step == n_steps - 1:
            return
        sequences = np.concatenate([sequences, next_tokens[:, None]], axis=1)  # [B, S + 1]
        attention_mask = np.concatenate([attention_mask, np.ones((B, 1), np.int64)], axis=1)  # [B, S + 1]
        position_ids = position_ids[:, -1:] + 1  # [B, 1]
        logits = model.forward_device(
            next_tokens[:, None], None, attention_mask, position_ids, cache, last_only=True
        )  # [B, 1, V]


def generate(model, input_ids, pixel_values=None, attention_mask=None, **kwargs):
    """The prompt followed by the generated tokens, [B, T + n_new] int64, as Transformers' generate()."""
    input_ids = np.asarray(backend.to_numpy(input_ids))
    steps = list(generate_tokens(model, input_ids, pixel_values, attention_mask, **kwargs))
    return np.concatenate([input_ids, np.stack(steps, axis=1)], axis=1)


def stream_text(token_steps, decode, byte_token_ids=frozenset()):
    """Turn a one-row stream of tokens into a stream of text pieces.

    token_steps: an iterator of [1] token arrays (generate_tokens with B = 1); decode: ids -> str
    (e.g. ``processor.decode(ids, skip_special_tokens=True)``); byte_token_ids: the tokenizer's
    byte-fallback tokens (<0x00> .. <0xFF>).

    The whole answer so far is decoded at each step and only its new end is yielded. Text that may
    still change is held back: a run of byte-fallback tokens decodes as a whole (valid UTF-8 becomes
    its characters, anything else one U+FFFD per byte), so nothing is yielded while the last token
    is a byte token, nor while the text ends in an incomplete character (U+FFFD).
    """
    ids, printed = [], ""
    for tokens in token_steps:
        if len(tokens) != 1:
            raise ValueError(f"streaming text needs a batch of one sequence, got {len(tokens)}")
        ids.append(int(tokens[0]))
        if ids[-1] in byte_token_ids:
            continue
        text = decode(ids)
        if text.endswith("\ufffd"):
            continue
        if len(text) > len(printed):
            yield text[len(printed) :]
        printed = text
    text = decode(ids) if ids else ""
    if len(text) > len(printed):
        yield text[len(printed) :]
