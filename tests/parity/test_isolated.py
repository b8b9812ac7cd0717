"""Isolated differences (minillava.parity.isolated): each module recomputed by minillava from one side's own input to
it. Every planted bug is named as the culprit, against Transformers and in a port's dump; float16 drift grows end to
end but names no culprit; a port that saves only layer outputs gets whole layers checked; padding may hold anything;
a module minillava cannot recompute says why and blames nothing."""

import numpy as np
import pytest

import minillava
from minillava import parity
from minillava.loading.config import load_config
from minillava.model.trace import activation_names
from minillava.parity.isolated import recipes_of, resolve_inputs

from .helpers import BUGS, kv_heads_tiled, report_for

FLOAT32 = parity.ISOLATED_TOLERANCES["float32"]


@pytest.mark.parametrize("plant,first", BUGS, ids=[b[0].__name__ for b in BUGS])
def test_every_planted_bug_is_the_culprit_against_transformers(setup, monkeypatch, plant, first):
    """minillava's modules (the candidate's, with the bug) fed Transformers' inputs: the module with the bug gives
    another output, every module before it agrees in isolation, and what follows it only inherits the error."""
    plant(monkeypatch)
    report = report_for(setup, isolated=True)
    assert report.culprit.name == first
    before = report.rows[: report.rows.index(report.culprit)]
    assert before and all(r.status == "ok" and not r.isolated_failed for r in before)
    if first != "vision_features":  # (keeping CLS stops minillava's forward at the merge: nothing after it)
        assert {r.name: r for r in report.rows}["language_model.norm"].drift  # the final norm is right, fed wrong
    table = parity.format_report(report)
    assert [line for line in table.splitlines() if "<== culprit" in line][0].startswith(first + " ")
    assert f"FAIL: culprit {first}: fed the same input, it gives another output" in table


@pytest.mark.parametrize("plant,first", BUGS, ids=[b[0].__name__ for b in BUGS])
def test_every_planted_bug_is_the_culprit_of_a_ports_trace(setup, monkeypatch, plant, first):
    """`parity compare --model`: the candidate's trace made with the bug (a port), its modules recomputed by a clean
    minillava from the candidate's own inputs."""
    model, inputs, reference = setup
    plant(monkeypatch)
    port, _ = parity.minillava_trace(model, inputs)
    monkeypatch.undo()  # minillava is clean again: it stands for the reference
    isolated = parity.isolated_differences(model, port, *FLOAT32)
    report = parity.compare_traces(reference, port, isolated=isolated)
    assert report.culprit.name == first
    assert all(not r.isolated_failed for r in report.rows[: report.rows.index(report.culprit)])


def test_float16_drift_grows_end_to_end_but_names_no_culprit(setup, folder):
    """minillava in float16 (as on a GPU) against Transformers in float32: the end-to-end difference grows from the
    pixels to the logits and fails float32's tolerance from the first float entry on; each module alone stays within
    one float16 module's rounding, so the report says drift, not a culprit. The same from a float16 port's trace
    recomputed by minillava in float32."""
    model, inputs, reference = setup
    model16 = minillava.load_model(folder, dtype="float16")
    trace16, _ = parity.minillava_trace(model16, inputs)
    for recomputing, traced in ((model16, reference), (model, trace16)):
        isolated = parity.isolated_differences(recomputing, traced, *parity.ISOLATED_TOLERANCES["float16"])
        report = parity.compare_traces(reference, trace16, isolated=isolated)  # float32's end-to-end tolerances
        rows = {r.name: r for r in report.rows}
        assert report.culprit is None and not report.passed
        assert rows["language_model.norm"].rel > 2 * rows["vision_tower.embeddings"].rel  # it grows, but
        assert rows["lm_head"].rel > 2 * rows["lm_head"].isolated.rel  # the logits' own share stays one rounding
        modules = [r for r in report.rows if r.isolated is not None]
        assert len(modules) == 28 and all(r.drift or r.status == "ok" for r in modules)
        assert max(r.isolated.rel for r in modules) < parity.ISOLATED_TOLERANCES["float16"][0] / 2
        assert parity.verdict(report)[-1].startswith("FAIL: drift only: ")
        loose = parity.compare_traces(reference, trace16, *parity.TOLERANCES["float16"], isolated=isolated)
        assert loose.passed


def test_a_trace_of_layer_outputs_only_gets_whole_layers_recomputed(setup, monkeypatch):
    """A port that saves only each layer's output (as llama.cpp's dumps do): each layer is recomputed whole from the
    previous one, so the culprit is the layer that holds the bug."""
    model, inputs, reference = setup
    kv_heads_tiled(monkeypatch)
    port, _ = parity.minillava_trace(model, inputs)
    monkeypatch.undo()
    parts = ("layer_norm1", "self_attn", "layer_norm2", "mlp", "input_layernorm", "post_attention_layernorm")
    port = {name: value for name, value in port.items() if name.rsplit(".", 1)[-1] not in parts}
    isolated = parity.isolated_differences(model, port, *FLOAT32)
    report = parity.compare_traces(reference, port, isolated=isolated, allow_missing=True)
    assert report.culprit.name == "language_model.layers.0"
    assert report.culprit.isolated.inputs == ("inputs_embeds", "attention_mask")
    assert isolated["vision_tower.encoder.layers.1"].inputs == ("vision_tower.encoder.layers.0",)
    assert isolated["vision_tower.encoder.layers.1"].status == "ok"


def test_padding_positions_of_the_inputs_may_hold_anything(setup):
    """A port's padding positions are arbitrary, NaN included: they are set to 0 before a recompute (attention
    would spread a NaN through 0 x NaN) and left out of the comparison."""
    model, inputs, reference = setup
    padding = ~inputs["attention_mask"].astype(bool)  # [B, T]
    port = {name: value.copy() for name, value in reference.items()}
    for value in port.values():
        if value.dtype.kind == "f" and value.shape[:2] == padding.shape:
            value[padding] = np.nan
    isolated = parity.isolated_differences(model, port, *FLOAT32)
    assert all(row.status == "ok" for row in isolated.values()), [n for n, r in isolated.items() if r.status != "ok"]
    assert parity.compare_traces(reference, port, isolated=isolated).passed


def test_a_module_minillava_cannot_recompute_says_why_and_blames_nothing(setup):
    model, inputs, reference = setup
    port = {name: value.copy() for name, value in reference.items()}
    port["multi_modal_projector"] = port["multi_modal_projector"][:, 1:]  # one image token short
    isolated = parity.isolated_differences(model, port, *FLOAT32)
    merge = isolated["inputs_embeds"]
    assert merge.status == "n/a" and merge.message.startswith("minillava could not recompute it: ValueError")
    projector = isolated["multi_modal_projector"]
    assert (
        projector.status == "FAIL" and projector.message == "shape mismatch: traced [3, 15, 48], recomputed [3, 16, 48]"
    )
    report = parity.compare_traces(reference, port, isolated=isolated)
    assert report.culprit.name == "multi_modal_projector"
    assert "inputs_embeds in isolation: minillava could not recompute it" in parity.format_report(report)


@pytest.mark.parametrize("variant", [("chat", "hub", "float16", True), ("layer_list", "fresh", "float32", False),
                                     ("interleave", "hub", "float16", True)], ids=lambda v: v[0])  # fmt: skip
def test_the_table_recomputes_every_module_from_entries_of_the_trace(tiny_checkpoint, variant):
    """Every entry a forward records (CLIP or SigLIP, one feature layer or a list) has a recipe, and the inputs of
    its first recipe are entries a forward records too: a full trace gets every module checked."""
    config = load_config(tiny_checkpoint(*variant))
    names = activation_names(config, with_images=True)
    recorded = set(names) | set(parity.INPUT_NAMES)
    for name in names:
        if name == "pixel_values":
            continue
        inputs, _ = resolve_inputs(name, recipes_of(name)[0][0], config)
        assert inputs and set(inputs) <= recorded, (name, inputs)
        assert set(inputs).isdisjoint({name}) and all(names.index(i) < names.index(name) for i in inputs if i in names)


def test_a_text_only_trace_is_recomputed_without_images(setup, hf):
    model = setup[0]
    inputs = {"input_ids": setup[1]["input_ids"][:, -5:], "attention_mask": setup[1]["attention_mask"][:, -5:]}
    reference, error = parity.transformers_trace(hf, model.config, inputs)
    isolated = parity.isolated_differences(model, reference, *FLOAT32)
    assert error is None and isolated["inputs_embeds"].inputs == ("language_model.embed_tokens", "input_ids")
    assert len(isolated) == 2 * 5 + 4 and all(r.status == "ok" for r in isolated.values())
