"""Traces in files (minillava.parity.npz): `minillava parity dump` writes the documented .npz format, and
`minillava parity compare` reads two of them, shows a config read differently first, names a perturbed module (the
culprit, given the checkpoint to recompute each module from the candidate's inputs), and refuses with one line the
files it cannot compare and the outputs it cannot write."""

import json
import zipfile

import numpy as np

from minillava import cli

from .helpers import culprit_line, first_failure_line, kv_heads_tiled, run_args, table, unwrapped


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
    lines = table(out)
    assert lines["vision_tower.encoder.layers.1.mlp"].endswith("missing  <== first failure")
    assert "note: 1 entries not in the candidate: vision_tower.encoder.layers.1.mlp" in out
    assert lines["multi_modal_projector"].endswith("FAIL")
    assert "note: multi_modal_projector: shape mismatch: candidate [2, 15, 48], reference [2, 16, 48]" in out
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
    lines = out.splitlines()
    assert status == 1 and lines[2:4] == [
        "config: 1 resolved field(s) differ (reference | candidate):",
        "  text.rms_norm_eps  1e-05 | 1e-06",
    ]  # right after the header (two lines: the paths are long), before any row
    assert "FAIL: the two sides resolved the config differently: text.rms_norm_eps (at the top)" in out

    other = tmp_path / "other.npz"
    argv = ["parity", "dump", "--model", str(folder), "--image", str(pictures[2]), "--prompt", "Hi"]
    argv += ["--out", str(other)]
    assert cli.main(argv) == 0
    status, out, _ = compare(capsys, dumps["a"], other)
    assert status == 1 and first_failure_line(out).startswith("input_ids ")
    assert "FAIL: the inputs differ (input_ids: the two sides were run on different prompts, images or padding" in out


def test_compare_with_the_checkpoint_names_the_culprit_of_a_port(dumps, folder, pictures, tmp_path, monkeypatch,
                                                                  capsys):  # fmt: skip
    """A port's dump (minillava with a bug, dumped) against minillava's: without --model the report can only point
    at the first failure; with it, each module is recomputed from the port's own input and the culprit named."""
    port = tmp_path / "port.npz"
    kv_heads_tiled(monkeypatch)
    assert cli.main(["parity", "dump", *run_args(folder, pictures)[1:], "--out", str(port)]) == 0
    monkeypatch.undo()
    status, out, _ = compare(capsys, dumps["a"], port)
    assert status == 1 and "<== culprit" not in out and "add --model FOLDER" in out
    status, out, _ = compare(capsys, dumps["a"], port, "--model", folder, "--json", tmp_path / "r.json")
    assert status == 1 and culprit_line(out).startswith("language_model.layers.0.self_attn ")
    isolated = "isolated: each module recomputed by minillava from the candidate's own input to it, with the weights of"
    assert f"{isolated} {folder}" in unwrapped(out)
    assert json.loads((tmp_path / "r.json").read_text())["culprit"] == "language_model.layers.0.self_attn"
    status, out, _ = compare(capsys, dumps["a"], dumps["hf"], "--model", folder)  # Transformers as the candidate
    assert status == 0 and "28 modules within tolerance in isolation" in out


def test_compare_with_another_checkpoint_is_refused(dumps, tiny_checkpoint, capsys):
    other = tiny_checkpoint("interleave", "hub", "float16", True)
    status, out, err = compare(capsys, dumps["a"], dumps["b"], "--model", other)
    assert status == 2 and out == ""
    assert err.startswith(f"minillava parity: --model {other}: not the reference's checkpoint: ")
    assert f"{dumps['a']} says" in err and len(err.strip().splitlines()) == 1


def test_compare_notes_a_trace_without_a_format_entry(dumps, tmp_path, capsys):
    bare = write_modified(dumps["b"], tmp_path / "bare.npz", lambda entries: entries.pop("format"))
    status, out, _ = compare(capsys, dumps["a"], bare)
    assert status == 0 and f"note: {bare}: no format entry; read as 'minillava-parity/1'" in unwrapped(out)


def test_compare_unreadable_files(dumps, tmp_path, capsys):
    text = tmp_path / "notes.npz"
    text.write_text("not a zip")
    npy = tmp_path / "lm_head.npy"
    np.save(npy, np.zeros((1, 2, 3), np.float32))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(dumps["a"].read_bytes()[:5000])
    foreign = tmp_path / "weights.npz"
    np.savez(foreign, w=np.zeros(3))
    members = tmp_path / "members.npz"
    with zipfile.ZipFile(members, "w") as z:
        z.writestr("readme.txt", "hello")
    flipped = bytearray(dumps["a"].read_bytes())
    flipped[3000:3010] = b"\xff" * 10
    (tmp_path / "crc.npz").write_bytes(bytes(flipped))
    bad_mask = write_modified(
        dumps["a"], tmp_path / "mask.npz", lambda e: e.update(attention_mask=e["attention_mask"] * 2)
    )
    bad_config = write_modified(dumps["a"], tmp_path / "cfg.npz", lambda e: e.update(config=np.array("{no")))
    float_ids = write_modified(dumps["a"], tmp_path / "ids.npz", lambda e: e.update(input_ids=e["input_ids"] * 1.0))
    for args, message in [
        ((tmp_path / "absent.npz", dumps["a"]), f"reference {tmp_path / 'absent.npz'}: no such file"),
        ((dumps["a"], tmp_path), f"candidate {tmp_path}: is a folder, not a .npz trace file"),
        ((dumps["a"], text), "notes.npz: not a .npz trace (a .npz is a zip archive of .npy files"),
        ((npy, dumps["a"]), "lm_head.npy: a .npy file holds one array; a trace is a .npz of named arrays"),
        ((dumps["a"], truncated), "truncated.npz: not a readable .npz trace (BadZipFile"),
        ((dumps["a"], tmp_path / "crc.npz"), "crc.npz: not a readable .npz trace (BadZipFile: Bad CRC-32"),
        ((dumps["a"], foreign), "weights.npz: not a minillava parity trace (no 'format' entry"),
        ((dumps["a"], members), "members.npz: members ['readme.txt'] are not .npy arrays"),
        ((dumps["a"], bad_mask), "mask.npz: attention_mask must hold only 0 (padding) and 1 (a token)"),
        ((dumps["a"], bad_config), "cfg.npz: entry 'config' is not valid JSON"),
        ((dumps["a"], float_ids), "ids.npz: input_ids must be an integer [B, T] array, got float64"),
        ((dumps["a"], dumps["b"], "--module-tol", "lm_head"), "--module-tol 'lm_head': expected GLOB=TOL"),
        (
            (dumps["a"], dumps["b"], "--json", tmp_path / "no" / "r.json"),
            f"the folder {tmp_path / 'no'} does not exist",
        ),
    ]:
        status, out, err = compare(capsys, *args)
        assert status == 2 and out == "" and len(err.strip().splitlines()) == 1 and message in err, err


def test_dump_out_that_cannot_be_written_is_refused_before_any_compute(folder, pictures, tmp_path, capsys):
    for out, problem in [
        (tmp_path / "absent" / "ours.npz", f"the folder {tmp_path / 'absent'} does not exist"),
        (tmp_path, "is a folder; give a file name"),
    ]:
        assert cli.main(["parity", "dump", *run_args(folder, pictures)[1:], "--out", str(out)]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err == f"minillava parity: --out {out}: {problem}\n"
