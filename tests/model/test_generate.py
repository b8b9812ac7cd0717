"""Generation (minillava.model.generate) against Transformers' generate(): greedy token for token, sampling
distributions equal, EOS and padding per row, reproducible seeds, bad arguments, the context's end."""

import numpy as np
import pytest
import torch

import minillava
from minillava.model import generate as gen

from .helpers import make_inputs


@pytest.fixture(scope="module")
def pair(tiny_checkpoint, hf_model, device):
    folder = tiny_checkpoint("base", "hub", "float32", False)
    return minillava.load_model(folder, device=device), hf_model(folder)


@pytest.fixture(scope="module")
def interleave_pair(tiny_checkpoint, hf_model, device):
    """llava-interleave's shape (SigLIP + Qwen2), in sharded float16 files. Untied, as llava-interleave-qwen-7b-hf:
    the tied random model answers one token over and over (its own embedding dominates the logits), which would
    make equal answers say little; tied logits are compared in test_llava.py."""
    folder = tiny_checkpoint("interleave_untied", "hub", "float16", True)
    return minillava.load_model(folder, device=device), hf_model(folder)


def hf_generate(hf, input_ids, attention_mask, pixel_values, eos_token_id, **kwargs):
    hf.generation_config.eos_token_id = eos_token_id  # None: never stop early
    if pixel_values is not None:  # (passing pixel_values=None makes Transformers 5.24 run CLIP on None)
        kwargs["pixel_values"] = torch.from_numpy(pixel_values)
    with torch.no_grad():
        out = hf.generate(
            input_ids=torch.from_numpy(input_ids),
            attention_mask=torch.from_numpy(attention_mask),
            pad_token_id=hf.config.pad_token_id,
            **kwargs,
        )
    return out.numpy()


PROMPTS = {
    "one-image": [[4, "img", 6]],
    "two-images-one-prompt": [[3, "img", 5, "img", 2]],
    "text-only": [[9]],
    "left-padded-batch": [[3, "img", 5, "img", 2], [4, "img", 9], [12]],
    "text-only-batch": [[3], [11]],
}


@pytest.mark.parametrize("family", ["pair", "interleave_pair"], ids=["llava-1.5", "interleave"])
@pytest.mark.parametrize("layout", PROMPTS.values(), ids=PROMPTS.keys())
def test_greedy_equals_transformers(request, family, layout):
    model, hf = request.getfixturevalue(family)
    input_ids, attention_mask, pixel_values = make_inputs(model.config, np.random.default_rng(10), layout)
    ours = model.generate(input_ids, pixel_values, attention_mask, max_new_tokens=48, eos_token_id=None)
    ref = hf_generate(hf, input_ids, attention_mask, pixel_values, None, max_new_tokens=48, do_sample=False)
    assert ours.shape == ref.shape == (len(layout), input_ids.shape[1] + 48)
    np.testing.assert_array_equal(ours, ref)
    for row in ours[:, input_ids.shape[1] :]:  # an answer worth comparing: not one token over and over
        assert len(set(row.tolist())) > 8, row


def test_eos_stops_each_row_and_the_others_go_on(pair):
    model, hf = pair
    layout = PROMPTS["left-padded-batch"]
    input_ids, attention_mask, pixel_values = make_inputs(model.config, np.random.default_rng(11), layout)
    T = input_ids.shape[1]
    free = model.generate(input_ids, pixel_values, attention_mask, max_new_tokens=30, eos_token_id=None)
    # Make the token row 0 produces first at step 4 the EOS: row 0 ends there, the others go on
    # (until they produce it themselves) and the ended row is filled with pad tokens.
    first_steps = {}
    for step, token in enumerate(free[0, T:]):
        first_steps.setdefault(int(token), step)
    eos = next(tok for tok, step in first_steps.items() if step >= 4)
    ours = model.generate(input_ids, pixel_values, attention_mask, max_new_tokens=30, eos_token_id=eos)
    ref = hf_generate(hf, input_ids, attention_mask, pixel_values, eos, max_new_tokens=30, do_sample=False)
    np.testing.assert_array_equal(ours, ref)
    stop = T + first_steps[eos]
    assert ours[0, stop] == eos and (ours[0, stop + 1 :] == model.config.pad_token_id).all()
    for row in (1, 2):  # rows that never produce eos run on to max_new_tokens, exactly as the free run
        assert eos not in free[row, T:], f"row {row} produces the eos itself: choose another prompt"
        np.testing.assert_array_equal(ours[row], free[row])
    assert ours.shape == free.shape


def test_a_row_in_a_padded_batch_equals_the_row_alone(pair):
    model, _ = pair
    layout = PROMPTS["left-padded-batch"]
    input_ids, attention_mask, pixel_values = make_inputs(model.config, np.random.default_rng(12), layout)
    batch = model.generate(input_ids, pixel_values, attention_mask, max_new_tokens=20, eos_token_id=None)
    real = attention_mask[1].astype(bool)
    alone = model.generate(input_ids[1:2, real], pixel_values[2:3], max_new_tokens=20, eos_token_id=None)
    np.testing.assert_array_equal(batch[1, input_ids.shape[1] :], alone[0, real.sum() :])


def test_repetition_penalty_greedy_equals_transformers(pair):
    model, hf = pair
    input_ids, attention_mask, pixel_values = make_inputs(model.config, np.random.default_rng(13), [[6, "img", 3]])
    kwargs = dict(max_new_tokens=24, repetition_penalty=1.5)
    ours = model.generate(input_ids, pixel_values, attention_mask, eos_token_id=None, **kwargs)
    ref = hf_generate(hf, input_ids, attention_mask, pixel_values, None, do_sample=False, **kwargs)
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize(
    "temperature,top_k,top_p,penalty",
    [(1.0, 50, 1.0, 1.0), (0.7, 0, 1.0, 1.0), (1.3, 10, 1.0, 1.0), (1.0, 0, 0.9, 1.0), (0.5, 20, 0.8, 1.2)],
)
def test_processed_distribution_equals_transformers_processors(temperature, top_k, top_p, penalty):
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((3, 200)) * 3).astype(np.float32)
    sequences = rng.integers(0, 200, size=(3, 17))
    processors = LogitsProcessorList()
    if penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(penalty))
    if temperature != 1.0:
        processors.append(TemperatureLogitsWarper(temperature))
    if top_k:
        processors.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p))
    ref = processors(torch.from_numpy(sequences), torch.from_numpy(logits)).numpy()
    ours = gen.process_logits(logits, sequences, True, temperature, top_k, top_p, penalty)
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(ref))  # the same tokens removed
    ours_p = gen.softmax(ours, axis=-1)
    ref_p = torch.softmax(torch.from_numpy(ref), dim=-1).numpy()
    assert np.max(np.abs(ours_p - ref_p)) <= 1e-6


def test_sampling_is_reproducible_with_a_seed(pair):
    model, _ = pair
    input_ids, attention_mask, pixel_values = make_inputs(model.config, np.random.default_rng(14), [[4, "img", 6]])
    kwargs = dict(max_new_tokens=16, do_sample=True, temperature=1.5, top_k=0, eos_token_id=None)
    a = model.generate(input_ids, pixel_values, attention_mask, seed=7, **kwargs)
    b = model.generate(input_ids, pixel_values, attention_mask, seed=7, **kwargs)
    c = model.generate(input_ids, pixel_values, attention_mask, seed=8, **kwargs)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def test_sample_draws_follow_the_distribution():
    probs = np.array([0.5, 0.3, 0.2, 0.0])
    scores = np.log(np.where(probs > 0, probs, 1e-30))[None].repeat(20000, axis=0).astype(np.float32)
    draws = gen.sample(scores, np.random.default_rng(0))
    freq = np.bincount(draws, minlength=4) / len(draws)
    assert np.max(np.abs(freq - probs)) < 0.015 and freq[3] == 0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(max_new_tokens=-3), "max_new_tokens"),
        (dict(do_sample=True, temperature=0.0), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(max_new_tokens=True), "max_new_tokens must be a positive integer, got True"),
        (dict(max_new_tokens=2.0), "max_new_tokens must be a positive integer"),
        (dict(temperature="hot"), "temperature must be a number"),
        (dict(do_sample=True, temperature=None), "temperature must be a number"),
        (dict(top_k=True), "top_k must be a non-negative integer"),
        (dict(top_p="0.9"), "top_p must be a number"),
        (dict(repetition_penalty=[1.2]), "repetition_penalty must be a number"),
        (dict(do_sample="yes"), "do_sample must be True or False"),
        (dict(seed=-1), "seed must be None or a non-negative integer, got -1"),
        (dict(seed="7"), "seed must be None or a non-negative integer, got '7'"),
        (dict(seed=1.5), "seed must be None or a non-negative integer"),
    ],
)
def test_bad_generation_arguments(pair, kwargs, match):
    model, _ = pair
    with pytest.raises(ValueError, match=match):
        model.generate(np.array([[1, 5, 6]]), **kwargs)


def test_prompt_longer_than_the_context(pair):
    model, _ = pair
    context = model.config.text.max_position_embeddings
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.generate(np.ones((1, context), dtype=np.int64), max_new_tokens=1)


def test_generation_stops_at_the_context(pair):
    model, _ = pair
    context = model.config.text.max_position_embeddings
    out = model.generate(np.ones((1, context - 3), dtype=np.int64), max_new_tokens=10, eos_token_id=None)
    assert out.shape == (1, context)


@pytest.mark.parametrize("step_index", [0, 2])
def test_non_finite_logits_stop_generation_with_one_error(step_index):
    """NaN logits (weights holding NaN, a float16 overflow) choose no token: argmax would answer an arbitrary id.
    The loop says so at the step where they appear, naming the rows, instead of generating garbage."""
    calls = []

    def step(ids, attention_mask, position_ids, cache, image_features=None):  # a model whose logits go NaN
        logits = np.zeros((2, 5), np.float32)
        logits[:, 1] = 1.0
        if len(calls) == step_index:
            logits[1, 3] = np.nan
        calls.append(ids.shape)
        return logits

    cache = minillava.KVCache(np, 1, 2, 1, 16, 2, np.float32)
    settings = dict(gen.SETTINGS_DEFAULTS, max_new_tokens=5)
    tokens = gen.generate_tokens(step, cache, np.ones((2, 3), np.int64), np.ones((2, 3), np.int64), **settings)
    where = "the prompt's last position" if step_index == 0 else f"generation step {step_index}"
    with pytest.raises(ValueError, match=rf"logits at {where} are NaN or infinite \(rows \[1\]\)"):
        for _ in tokens:
            pass
    assert len(calls) == step_index + 1  # stopped at once
