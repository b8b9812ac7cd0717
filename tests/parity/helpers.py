"""What the parity tests share: the bugs they plant in minillava's forward (with monkeypatch), the report of a
minillava run against Transformers' trace (with the isolated differences, as `minillava parity` computes them),
and the arguments of `minillava parity`."""

import re

import numpy as np

import minillava.model.attention
import minillava.model.clip
import minillava.model.llama
import minillava.model.llava
import minillava.model.rope
from minillava import parity

PROMPTS = ["<image>\n<image>\nCompare the two pictures.", "<image>\nWhat is shown?"]  # row 1 gets left padding


def report_for(setup, isolated=False):
    """minillava's trace against Transformers'; ``isolated``: with minillava's modules fed Transformers' inputs."""
    model, inputs, reference = setup
    ours, error = parity.minillava_trace(model, inputs)
    alone = parity.isolated_differences(model, reference, *parity.ISOLATED_TOLERANCES["float32"]) if isolated else None
    report = parity.compare_traces(reference, ours, isolated=alone)
    if error:
        report.notes.append(error)
    return report


# ---------------------------------------------------------------------------------------------
# Planted bugs
# ---------------------------------------------------------------------------------------------


def rotate_interleaved(x):
    """The RoFormer paper's pairs (x0, x1), (x2, x3), ... instead of Llama's halves."""
    pairs = x.reshape(*x.shape[:-1], -1, 2)  # [..., hd/2, 2]
    return np.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(x.shape)


def keep_cls(monkeypatch):
    original = minillava.model.clip.select_features
    monkeypatch.setattr(
        minillava.model.llava, "select_features", lambda hs, layer, strategy: original(hs, layer, "full")
    )


def layer_norm_eps(monkeypatch):
    original = minillava.model.clip.layer_norm
    monkeypatch.setattr(
        minillava.model.clip, "layer_norm", lambda x, weight, bias, eps: original(x, weight, bias, 1e-2)
    )


def mask_ignores_padding(monkeypatch):
    original = minillava.model.llama.causal_mask
    monkeypatch.setattr(minillava.model.llama, "causal_mask", lambda am, n, start: original(np.ones_like(am), n, start))


def merge_off_by_one(monkeypatch):
    original = minillava.model.llava.merge_image_features
    shifted = lambda e, ids, f, idx: original(e, np.roll(ids, 1, axis=1), f, idx)  # noqa: E731
    monkeypatch.setattr(minillava.model.llava, "merge_image_features", shifted)


def kv_heads_tiled(monkeypatch):
    """Grouped-query attention with the key/value heads tiled (0, 1, 0, 1) instead of repeated (0, 0, 1, 1)."""
    monkeypatch.setattr(minillava.model.attention, "repeat_kv", lambda x, n: x if n == 1 else np.tile(x, (1, n, 1, 1)))


def rotate_half_interleaved(monkeypatch):
    monkeypatch.setattr(minillava.model.rope, "rotate_half", rotate_interleaved)


BUGS = [  # plant, the first module that must fail
    (rotate_half_interleaved, "language_model.layers.0.self_attn"),
    (keep_cls, "vision_features"),
    (layer_norm_eps, "vision_tower.pre_layrnorm"),
    (mask_ignores_padding, "language_model.layers.0.self_attn"),
    (merge_off_by_one, "inputs_embeds"),
    (kv_heads_tiled, "language_model.layers.0.self_attn"),
]

# ---------------------------------------------------------------------------------------------
# The command line: minillava parity [dump|compare]
# ---------------------------------------------------------------------------------------------


def run_args(folder, pictures, *extra):
    images = [arg for p in pictures[:2] for arg in ("--image", str(p))]
    prompts = ["--prompt", "What is shown?", "--prompt", "Describe the picture in great detail, please."]
    return ["parity", "--model", str(folder), *images, *prompts, *extra]


def first_failure_line(out):
    return [line for line in out.splitlines() if "<== first failure" in line][0]


def unwrapped(out) -> str:
    """A report with its wrapped prose lines joined again (a continuation starts with six spaces)."""
    return re.sub(r"\n      (?=\S)", " ", out)


def culprit_line(out):
    return [line for line in out.splitlines() if "<== culprit" in line][0]


def table(out) -> dict:
    """The rows of a report's table: {name: line}, the lines between the column header and the first note."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("module "))
    rows = {}
    for line in lines[start + 1 :]:
        if line.startswith(("note:", "PASS", "FAIL", "look at", "JSON", "plot", "      ")):
            break
        rows[line.split()[0]] = line
    return rows
