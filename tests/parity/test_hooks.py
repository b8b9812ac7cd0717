"""The two sides of a comparison (minillava.parity.hooks): minillava's trace, and Transformers' model run with
forward hooks on the submodules of the same names; both record every activation of the model's one list; and both
sides' greedy generation with each step's logits."""

import sys

import numpy as np
import pytest

import minillava.model.llava
from minillava import parity
from minillava.model.trace import activation_names


def test_both_sides_record_every_activation_and_the_hooks_are_removed(setup, hf):
    model, inputs, reference = setup
    ours, error = parity.minillava_trace(model, inputs)
    assert error is None
    expected = sorted([*parity.INPUT_NAMES, *activation_names(model.config, with_images=True)])
    assert sorted(ours) == sorted(reference) == expected
    for name, value in ours.items():
        assert value.shape == reference[name].shape, name
        assert value.dtype == reference[name].dtype == ("int64" if name in parity.INPUT_NAMES else "float32"), name


def hook_count(hf):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in hf.modules())


def test_the_hooks_are_removed_after_the_run(setup, hf):
    model, inputs, reference = setup
    before = hook_count(hf)
    again, error = parity.transformers_trace(hf, model.config, inputs)
    assert error is None and hook_count(hf) == before
    assert sorted(again) == sorted(reference)


def test_text_only_inputs_have_no_vision_entries(setup, hf):
    model = setup[0]
    inputs = {"input_ids": setup[1]["input_ids"][:, -5:], "attention_mask": setup[1]["attention_mask"][:, -5:]}
    reference, error = parity.transformers_trace(hf, model.config, inputs)
    ours, our_error = parity.minillava_trace(model, inputs)
    assert error is None and our_error is None
    expected = sorted([*parity.INPUT_NAMES, *activation_names(model.config, with_images=False)])
    assert sorted(reference) == sorted(ours) == expected
    assert parity.compare_traces(reference, ours).passed


def test_a_forward_that_fails_keeps_what_it_recorded(setup, monkeypatch):
    model, inputs, _ = setup

    def broken(*args):
        raise RuntimeError("planted")

    monkeypatch.setattr(minillava.model.llava, "merge_image_features", broken)
    ours, error = parity.minillava_trace(model, inputs)
    assert error == "minillava stopped with RuntimeError: planted"
    assert "multi_modal_projector" in ours and "language_model.embed_tokens" in ours
    assert "inputs_embeds" not in ours and "lm_head" not in ours


def test_without_transformers_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    with pytest.raises(parity.ParityError, match="not installed.*pip install torch transformers"):
        parity.import_transformers()


def test_greedy_on_both_sides_keeps_each_steps_logits(setup, hf):
    """minillava_greedy makes model.generate's tokens, and its step logits are Transformers' (greedy, the same
    tokens, every step within float32's logits tolerance)."""
    model, inputs, _ = setup
    tokens, logits = parity.minillava_greedy(model, inputs, 5)
    T = inputs["input_ids"].shape[1]
    assert (tokens == model.generate(**inputs, max_new_tokens=5)[:, T:]).all()
    theirs, their_logits = parity.transformers_greedy(hf, inputs, 5, model.generation_defaults.pad_token_id)
    assert (theirs == tokens).all() and logits.shape == their_logits.shape == (5, 2, model.config.text.vocab_size)
    assert np.abs(logits - their_logits).max() <= 1e-4 * np.abs(their_logits).max()
    assert (logits.argmax(-1).T == tokens).all()  # step s's logits chose token s
    forward = parity.minillava_logits(model, inputs)  # [B, T, V]: the prefill's last position is step 0
    assert np.abs(forward[:, -1] - logits[0]).max() <= 1e-5 * np.abs(logits[0]).max()
