"""Traces in files (minillava.parity.npz): `minillava parity dump` writes the documented .npz format, and
`minillava parity compare` reads two of them, names a perturbed module, and refuses files it cannot compare."""

import json

import numpy as np

from minillava import cli

from .helpers import first_failure_line


def write_modified(source, target, change):
    with np.load(source) as f:
        entries = {name: f[name] for name in f.files}
    change(entries)
    with open(target, "wb") as f:
        np.savez(f, **entries)
    return target


def compare(capsys, *args):
    status = cli.main(["parity", "compare", *map(str, args)])
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
    assert cli.main(argv) == 0
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
