"""Tracing (minillava.model.trace): with ``trace=None``, the default, nothing is recorded or copied and the logits
are those of a traced run; a dict or a callable receives each activation of ``activation_names`` once, and
``order_key`` puts them in data-flow order."""

import numpy as np
import pytest

import minillava
import minillava.model.clip
import minillava.model.llama
import minillava.model.llava
from minillava.model.trace import activation_names, order_key, record

from .helpers import BATCH, make_inputs


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return minillava.load_model(tiny_checkpoint("base", "fresh", "float32", False))


def spy_on_record(monkeypatch):
    """Wrap ``record`` at its call sites (llava, clip and llama import it by name); returns the list of
    (trace, name) each call gets."""
    calls = []

    def spy(trace, name, value):
        calls.append((trace, name))
        record(trace, name, value)

    for module in (minillava.model.llava, minillava.model.clip, minillava.model.llama):
        monkeypatch.setattr(module, "record", spy)
    return calls


def test_trace_off_records_and_copies_nothing(model, monkeypatch):
    """A left-padded batch of two rows and three images, run with trace=None and with a dict."""
    input_ids, attention_mask, pixel_values = make_inputs(model.config, np.random.default_rng(6), BATCH)
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values)
    traced = {}
    traced_logits = model.forward(**inputs, trace=traced)
    names = activation_names(model.config, with_images=True)
    assert sorted(traced) == sorted(names)

    calls = spy_on_record(monkeypatch)
    logits = model.forward(**inputs)  # trace=None
    assert calls and all(trace is None for trace, _ in calls)  # every call site passes trace=None along
    assert sorted(name for _, name in calls) == sorted(names)  # the same call sites that record when tracing is on
    np.testing.assert_array_equal(logits, traced_logits)
    monkeypatch.undo()

    class Untouchable:  # record(None, ...) must not look at the value at all
        def __getattr__(self, name):
            raise AssertionError(f"record touched the value (.{name}) with tracing off")

    assert record(None, "x", Untouchable()) is None


def test_callable_trace_sees_each_activation_once(model):
    input_ids, attention_mask, pixel_values = make_inputs(model.config, np.random.default_rng(5), [[2, "img", 2]])
    seen = []
    logits = model.forward(input_ids, pixel_values=pixel_values, trace=lambda name, value: seen.append((name, value)))
    names = [n for n, _ in seen]
    assert names[0] == "language_model.embed_tokens" and names[-1] == "lm_head"
    assert "pixel_values" in names and "multi_modal_projector" in names and "inputs_embeds" in names
    assert len(names) == len(set(names))
    assert sorted(names, key=order_key) == activation_names(model.config, with_images=True)
    np.testing.assert_array_equal(seen[-1][1], logits)  # lm_head's entry is the logits forward returns


def test_text_only_forward_records_no_vision_entries(model):
    traced = {}
    model.forward(np.array([[1, 5, 6, 7]]), trace=traced)
    assert sorted(traced, key=order_key) == activation_names(model.config, with_images=False)
    assert not any(name.startswith(("vision", "pixel", "multi_modal")) for name in traced)
