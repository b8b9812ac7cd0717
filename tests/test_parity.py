"""The parity report (minillava/parity.py) finds real bugs: known mistakes are planted in minillava's
forward with monkeypatch, and the report must name the module where each first shows.

Transformers' trace is computed once per module (a left-padded batch of two rows, three images);
each planted bug only reruns minillava, which takes milliseconds on the tiny checkpoint.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import minillava
import minillava.model.attention
import minillava.model.llama
import minillava.model.llava
import minillava.model.rope
import minillava.model.vision
from minillava import parity
from minillava.model.trace import activation_names, order_key

PROMPTS = ["<image>\n<image>\nCompare the two pictures.", "<image>\nWhat is shown?"]  # row 1 gets left padding


@pytest.fixture(scope="module")
def folder(tiny_checkpoint):
    return tiny_checkpoint("chat", "hub", "float16", True)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(40, 60), (50, 30), (32, 32)]):
        paths.append(tmp_path_factory.mktemp("pics") / f"p{i}.png")
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def setup(folder, pictures, device):
    """(model, inputs, Transformers' trace) for the padded batch."""
    model, processor = minillava.load_model(folder, device=device), minillava.load_processor(folder)
    images = [Image.open(p) for p in pictures]
    inputs = parity.build_inputs(processor, images, PROMPTS, raw=True)
    assert inputs["attention_mask"].min() == 0  # a padded batch
    reference, error = parity.transformers_trace(parity.load_transformers(folder), model.config, inputs)
    assert error is None
    return model, inputs, reference


def report_for(setup):
    model, inputs, reference = setup
    ours, error = parity.minillava_trace(model, inputs)
    report = parity.compare_traces(reference, ours)
    if error:
        report.notes.append(error)
    return report


def test_a_clean_run_passes(setup):
    report = report_for(setup)
    assert report.passed and report.first_failure is None
    names = [r.name for r in report.rows]
    model = setup[0]
    assert names == list(parity.INPUT_NAMES) + activation_names(model.config, with_images=True)
    assert all(r.rel is not None and r.rel <= 1e-5 for r in report.rows if r.name != "lm_head")


# ---------------------------------------------------------------------------------------------
# Planted bugs
# ---------------------------------------------------------------------------------------------


def rotate_interleaved(x):
    """The RoFormer paper's pairs (x0, x1), (x2, x3), ... instead of Llama's halves."""
    pairs = x.reshape(*x.shape[:-1], -1, 2)  # [..., hd/2, 2]
    return np.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(x.shape)


def keep_cls(monkeypatch):
    original = minillava.model.vision.select_features
    monkeypatch.setattr(
        minillava.model.llava, "select_features", lambda hs, layer, strategy: original(hs, layer, "full")
    )


def layer_norm_eps(monkeypatch):
    original = minillava.model.vision.layer_norm
    monkeypatch.setattr(
        minillava.model.vision, "layer_norm", lambda x, weight, bias, eps: original(x, weight, bias, 1e-2)
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


@pytest.mark.parametrize("plant,first", BUGS, ids=[b[0].__name__ for b in BUGS])
def test_the_report_names_the_first_wrong_module(setup, monkeypatch, plant, first):
    plant(monkeypatch)
    report = report_for(setup)
    assert not report.passed
    assert report.first_failure.name == first
    before = report.rows[: report.rows.index(report.first_failure)]
    assert before and all(r.status == "ok" for r in before)
    table = parity.format_report(report)
    assert [line for line in table.splitlines() if "<== first failure" in line][0].startswith(first + " ")
    assert f"the first in data-flow order is {first} " in table


def test_a_shape_mismatch_is_a_failure_not_a_crash(setup, monkeypatch):
    keep_cls(monkeypatch)  # [N, 1 + Np, Dv] features: the merge then refuses them, ending minillava's forward
    report = report_for(setup)
    row = report.first_failure
    assert row.status == "FAIL" and "shape mismatch: candidate [3, 17, 32], reference [3, 16, 32]" in row.message
    assert any("minillava stopped with ValueError" in note for note in report.notes)
    missing = [r.name for r in report.rows if r.status == "missing"]
    assert "inputs_embeds" in missing and "lm_head" in missing  # never computed, listed as missing
    assert "language_model.embed_tokens" not in missing  # computed before the error, still compared


def test_planted_bug_is_still_caught_at_reduced_precision_tolerances(setup, monkeypatch):
    """The bf16 defaults are loose, but not loose enough to hide a real bug."""
    rotate_half_interleaved(monkeypatch)
    tol, logits_tol = parity.TOLERANCES["bfloat16"]
    model, inputs, reference = setup
    ours, _ = parity.minillava_trace(model, inputs)
    report = parity.compare_traces(reference, ours, tol=tol, logits_tol=logits_tol)
    assert report.first_failure.name == "language_model.layers.0.self_attn"


def test_tracing_off_records_and_copies_nothing(setup, monkeypatch):
    model, inputs, _ = setup
    calls = []
    for module in (minillava.model.llava, minillava.model.vision, minillava.model.llama):
        monkeypatch.setattr(module, "record", lambda trace, name, value: calls.append((trace, name)))
    model.forward(**inputs)
    assert calls and all(trace is None for trace, _ in calls)  # every call site passes trace=None along
    n_on = len(activation_names(model.config, with_images=True))
    assert len(calls) == n_on  # the same call sites that record when tracing is on
    monkeypatch.undo()

    class Untouchable:  # record(None, ...) must not look at the value at all
        def __getattr__(self, name):
            raise AssertionError(f"record touched the value (.{name}) with tracing off")

    assert minillava.model.trace.record(None, "x", Untouchable()) is None


# ---------------------------------------------------------------------------------------------
# The command line: minillava parity [dump|compare]
# ---------------------------------------------------------------------------------------------


def run_args(folder, pictures, *extra):
    images = [arg for p in pictures[:2] for arg in ("--image", str(p))]
    prompts = ["--prompt", "What is shown?", "--prompt", "Describe the picture in great detail, please."]
    return ["parity", "--model", str(folder), *images, *prompts, *extra]


def first_failure_line(out):
    return [line for line in out.splitlines() if "<== first failure" in line][0]


def test_command_line_clean_run_exits_0(folder, pictures, capsys):
    assert minillava.cli.main(run_args(folder, pictures)) == 0
    out = capsys.readouterr().out
    assert "PASS: all 31 compared entries within tolerance" in out
    assert "real positions" in out  # the two prompts differ in length: a padded batch
    names = [line.split()[0] for line in out.splitlines()[2:33]]
    assert names == sorted(names, key=order_key) and names[-1] == "lm_head"


def test_command_line_planted_bug_exits_1(folder, pictures, monkeypatch, capsys):
    kv_heads_tiled(monkeypatch)
    assert minillava.cli.main(run_args(folder, pictures)) == 1
    out = capsys.readouterr().out
    assert first_failure_line(out).startswith("language_model.layers.0.self_attn ")
    assert "look at: attention" in out


def test_reduced_precision_uses_measured_tolerances_and_says_so(folder, pictures, capsys):
    assert minillava.cli.main(run_args(folder, pictures, "--dtype", "bf16")) == 0
    out = capsys.readouterr().out
    assert "Transformers in bfloat16" in out and "rounding drift" in out
    # The drift is real: fp32 tolerances reject it.
    fp32_tolerances = ["--tol", "1e-5", "--logits-tol", "1e-4"]
    assert minillava.cli.main(run_args(folder, pictures, "--dtype", "bf16", *fp32_tolerances)) == 1
    assert minillava.cli.main(run_args(folder, pictures, "--dtype", "bf16", "--module-tol", "*=1e-5")) == 1


def test_plot(folder, pictures, tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "errors.png"
    assert minillava.cli.main(run_args(folder, pictures, "--plot", str(png))) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert minillava.cli.main(run_args(folder, pictures, "--plot", str(png))) == 2
    captured = capsys.readouterr()
    assert "PASS" in captured.out  # the report came first
    assert captured.err.strip() == "minillava parity: --plot needs matplotlib: `pip install matplotlib`"


def test_without_transformers_minillava_still_runs(folder, pictures, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    assert minillava.cli.main(run_args(folder, pictures)) == 2
    captured = capsys.readouterr()
    assert len(captured.err.strip().splitlines()) == 1 and "not installed" in captured.err
    assert "lm_head" in captured.out and "missing  (not in the reference)" in captured.out
    out = tmp_path / "ours.npz"
    assert minillava.cli.main(["parity", "dump", *run_args(folder, pictures)[1:], "--out", str(out)]) == 0
    assert out.is_file()


# ---------------------------------------------------------------------------------------------
# dump and compare
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dumps(folder, pictures, tmp_path_factory):
    """Two minillava dumps and a Transformers dump of the same inputs."""
    out = tmp_path_factory.mktemp("dumps")
    paths = {}
    for name, extra in [("a", []), ("b", []), ("hf", ["--source", "transformers"])]:
        paths[name] = out / f"{name}.npz"
        argv = ["parity", "dump", *run_args(folder, pictures)[1:], "--out", str(paths[name]), *extra]
        assert minillava.cli.main(argv) == 0
    return paths


def write_modified(source, target, change):
    with np.load(source) as f:
        entries = {name: f[name] for name in f.files}
    change(entries)
    with open(target, "wb") as f:
        np.savez(f, **entries)
    return target


def compare(capsys, *args):
    status = minillava.cli.main(["parity", "compare", *map(str, args)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_dump_format(dumps, folder):
    with np.load(dumps["a"], allow_pickle=False) as f:
        entries = {name: f[name] for name in f.files}
    assert str(entries["format"]) == "minillava-parity/1"
    assert json.loads(str(entries["config"])) == json.loads((folder / "config.json").read_text())
    assert json.loads(str(entries["meta"])) == {"producer": "minillava", "dtype": "float32", "device": "cpu"}
    B, T = entries["input_ids"].shape
    assert entries["input_ids"].dtype == entries["attention_mask"].dtype == np.int64
    assert entries["pixel_values"].shape == (2, 3, 28, 28)
    assert entries["lm_head"].shape == (B, T, 384) and entries["vision_features"].shape == (2, 16, 32)
    activations = [n for n in entries if n not in ("format", "config", "meta", "input_ids", "attention_mask")]
    assert len(activations) == 29 and all(entries[n].dtype == np.float32 for n in activations)


def test_compare_round_trip(dumps, capsys):
    status, out, _ = compare(capsys, dumps["a"], dumps["b"])
    assert status == 0 and "PASS: all 31 compared entries" in out
    status, out, _ = compare(capsys, dumps["hf"], dumps["a"])  # Transformers' dump as the reference
    assert status == 0 and "transformers 5." in out


def test_compare_names_the_perturbed_module(dumps, tmp_path, capsys):
    def perturb(entries):
        x = entries["language_model.layers.1.mlp"]
        x[0, -1, 3] += 1e-3 * np.abs(x).max()

    bad = write_modified(dumps["a"], tmp_path / "bad.npz", perturb)
    status, out, _ = compare(capsys, dumps["a"], bad)
    assert status == 1
    assert first_failure_line(out).startswith("language_model.layers.1.mlp ")
    assert "FAIL: 1 of 31 entries fail" in out


def test_compare_missing_and_mismatched_entries(dumps, tmp_path, capsys):
    def damage(entries):
        del entries["vision_tower.encoder.layers.1.mlp"]
        entries["multi_modal_projector"] = entries["multi_modal_projector"][:, 1:]

    bad = write_modified(dumps["a"], tmp_path / "bad.npz", damage)
    status, out, _ = compare(capsys, dumps["a"], bad)
    assert status == 1
    lines = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert "missing  (not in the candidate)" in lines["vision_tower.encoder.layers.1.mlp"]
    assert "<== first failure" in lines["vision_tower.encoder.layers.1.mlp"]
    assert "shape mismatch: candidate [2, 15, 48], reference [2, 16, 48]" in lines["multi_modal_projector"]
    assert lines["lm_head"].rstrip().endswith("ok")  # the rest is still compared
    status, out, _ = compare(capsys, dumps["a"], bad, "--allow-missing")
    assert status == 1 and first_failure_line(out).startswith("multi_modal_projector ")


def test_compare_different_config_and_inputs(dumps, folder, pictures, tmp_path, capsys):
    def other_config(entries):
        config = json.loads(str(entries["config"]))
        config["text_config"]["rms_norm_eps"] = 1e-6
        entries["config"] = np.array(json.dumps(config))

    bad = write_modified(dumps["a"], tmp_path / "config.npz", other_config)
    status, out, _ = compare(capsys, dumps["a"], bad)
    assert status == 1 and "different configs: text.rms_norm_eps: 1e-05 vs 1e-06" in out

    other = tmp_path / "other.npz"
    argv = ["parity", "dump", "--model", str(folder), "--image", str(pictures[2]), "--prompt", "Hi"]
    argv += ["--out", str(other)]
    assert minillava.cli.main(argv) == 0
    status, out, _ = compare(capsys, dumps["a"], other)
    assert status == 1 and first_failure_line(out).startswith("input_ids ")
    assert "different prompts, images or padding" in out


def test_compare_unreadable_files(dumps, tmp_path, capsys):
    text = tmp_path / "notes.npz"
    text.write_text("not a zip")
    for args, message in [
        ((tmp_path / "absent.npz", dumps["a"]), "absent.npz: no such file"),
        ((dumps["a"], text), "notes.npz: not a readable .npz trace"),
        ((dumps["a"], dumps["b"], "--module-tol", "lm_head"), "expected GLOB=TOL"),
    ]:
        status, out, err = compare(capsys, *args)
        assert status == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_python_dash_m_dispatch(dumps):
    result = subprocess.run(
        [sys.executable, "-m", "minillava", "parity", "compare", str(dumps["a"]), str(dumps["b"])],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and "PASS" in result.stdout, result.stderr
