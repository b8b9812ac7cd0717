"""Where greedy generations part (minillava.parity.generation, `minillava parity generate`): the first differing step,
the two tokens, the reference's margin and both top-5s, a near-tie told from a fault; and batch invariance
(`minillava parity batch`): each row of a left-padded batch against the same prompt alone."""

import json

import numpy as np
import pytest
from PIL import Image

import minillava.model.llava
from minillava import cli, parity

from .helpers import mask_ignores_padding, run_args, unwrapped


def steps_of(*rows):
    """Step logits [n, B, V] from each row's list of [V] logits."""
    return np.stack([np.stack(step) for step in zip(*rows, strict=True)]).astype(np.float32)


def test_same_tokens_a_near_tie_and_a_fault():
    reference = [[5.0, 1.0, 0.0, 0.0], [1.0, 4.0, 3.99, 0.0], [0.0, 0.0, 1.0, 9.0]]  # row 0, steps 0..2: 0, 1, 3
    tied = [[5.0, 1.0, 0.0, 0.0], [1.0, 3.99, 4.0, 0.0], [0.0, 0.0, 1.0, 9.0]]  # step 1: 2 by 0.01, within 1e-2
    wrong = [[5.0, 1.0, 0.0, 0.0], [1.0, 2.0, 3.0, 0.0], [0.0, 0.0, 1.0, 9.0]]  # step 1: 2, the logits out of 1e-2
    tokens = np.array([[0, 1, 3], [0, 1, 3], [0, 1, 3]])  # [B, n]: the reference's
    rows = parity.compare_generations(
        tokens, np.array([[0, 1, 3], [0, 2, 3], [0, 2, 3]]), steps_of(reference, reference, reference),
        steps_of(reference, tied, wrong), tol=1e-2,
    )  # fmt: skip
    same, tie, fault = rows
    assert same.verdict == "same" and same.steps == 3 and same.rel == 0 and not same.failed
    assert (same.closest_step, same.closest_margin) == (1, pytest.approx(0.01, abs=1e-5))  # 4.0 vs 3.99
    assert tie.verdict == "tie" and not tie.failed and (tie.step, tie.reference_token, tie.candidate_token) == (1, 1, 2)
    assert tie.margin == pytest.approx(0.01, abs=1e-5) and tie.candidate_margin == pytest.approx(0.01, abs=1e-5)
    assert tie.rel == pytest.approx(0.01 / 4, abs=1e-6)  # max |diff| / max |reference logit| at that step
    assert [t for t, _ in tie.top_reference] == [1, 2, 0, 3] and [t for t, _ in tie.top_candidate] == [2, 1, 0, 3]
    assert fault.verdict == "fault" and fault.failed and fault.step == 1 and fault.rel == pytest.approx(2 / 4)
    decode = lambda i: f"t{i}"  # noqa: E731
    assert parity.format_divergence(tie, decode)[:3] == [
        "row 1: parts at step 1: reference 't1' (1), candidate 't2' (2)",
        "  the reference's margin of its token over the candidate's: 0.01 (the candidate's, the other way: 0.01)",
        "  logits at this step: rel diff 2.5e-03 <= tol 0.01: a near-tie broken the other way by rounding, not a bug",
    ]
    assert "> tol 0.01: a fault" in parity.format_divergence(fault, decode)[2]


def test_the_comparison_stops_at_the_references_eos():
    """After a row's EOS both sides only pad: later steps are not compared (here they would differ)."""
    logits = steps_of([[0.0, 9.0, 0.0], [0.0, 0.0, 9.0], [9.0, 0.0, 0.0]])  # [3, 1, 3]: tokens 1, 2 (EOS), 0
    (row,) = parity.compare_generations([[1, 2, 0]], [[1, 2, 1]], logits, logits, tol=1e-4, eos_token_id=2)
    assert row.verdict == "same" and row.steps == 2
    (row,) = parity.compare_generations([[1, 2, 0]], [[1, 2, 1]], logits, logits, tol=1e-4)
    assert row.step == 2  # without EOS the third step counts


def test_generate_command_clean_run(folder, pictures, tmp_path, capsys):
    path = tmp_path / "generate.json"
    argv = ["parity", "generate", *run_args(folder, pictures)[1:], "--max-new-tokens", "6", "--json", str(path)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "greedy generation, 6 new tokens at most, 2 row(s); logits tolerance 0.0001" in out
    assert "row 0: the same 6 tokens" in out and "row 1: the same 6 tokens" in out
    assert "PASS: every step's logits within tolerance" in out
    data = json.loads(path.read_text())
    assert (
        data["kind"] == "generate" and data["exit_status"] == 0 and [r["verdict"] for r in data["rows"]] == ["same"] * 2
    )


def test_a_planted_lm_head_perturbation_parts_at_its_step_with_the_references_margin(
    folder, pictures, hf, monkeypatch, tmp_path, capsys
):
    """minillava's logits of row 1 pushed, at step 3 only, towards the reference's second choice there: the report
    names step 3, the two tokens, the reference's margin between them (as Transformers' own logits give it) and calls
    it a fault; row 0 is untouched."""
    processor = minillava.load_processor(folder)
    images = [Image.open(p) for p in pictures[:2]]
    inputs = parity.build_inputs(processor, images, run_args(folder, pictures)[-3::2], raw=False)
    tokens, logits = parity.transformers_greedy(hf, inputs, 6)  # the reference: [B, 6], [6, B, V]
    step = 3
    first, second = np.argsort(-logits[step, 1])[:2]  # the reference's best two tokens of row 1 at step 3
    assert first == tokens[1, step]
    margin = float(logits[step, 1, first] - logits[step, 1, second])
    original, calls = minillava.model.llava.lm_head, []

    def perturbed(weight, hidden):
        out = original(weight, hidden)  # [B, 1, V]: generation computes the last position only
        if len(calls) == step:  # the prefill is call 0, the decode step s call s
            out[1, -1, second] += margin + 1.0
        calls.append(1)
        return out

    monkeypatch.setattr(minillava.model.llava, "lm_head", perturbed)
    path = tmp_path / "generate.json"
    argv = ["parity", "generate", *run_args(folder, pictures)[1:], "--max-new-tokens", "6", "--json", str(path)]
    assert cli.main(argv) == 1
    out = unwrapped(capsys.readouterr().out)
    decode = processor.decode
    assert "row 0: the same 6 tokens" in out
    assert (
        f"row 1: parts at step 3: reference {decode(first)!r} ({first}), candidate {decode(second)!r} ({second})" in out
    )
    assert f"the reference's margin of its token over the candidate's: {margin:.4g} " in out
    assert "a fault, the candidate computes other logits for the same tokens" in out
    assert f"top-5 reference: {decode(first)!r} {logits[step, 1, first]:.4g} | {decode(second)!r}" in out
    assert "FAIL: rows [1]: the logits differ beyond tolerance (a fault, not a near-tie)" in out
    row = json.loads(path.read_text())["rows"][1]
    assert (row["step"], row["reference_token"], row["candidate_token"], row["verdict"]) == (3, first, second, "fault")
    assert row["margin"] == pytest.approx(margin, rel=1e-5)


def test_batch_command_each_row_against_the_prompt_alone(folder, pictures, tmp_path, capsys):
    args = [*run_args(folder, pictures)[1:], "--max-new-tokens", "4"]
    assert cli.main(["parity", "batch", *args, "--json", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "minillava (float32, cpu): each row of a left-padded batch of 2" in out
    assert "PASS: every row of the batch computes what its prompt alone computes (within 0.0001)" in out
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [r["padded"] > 0 for r in rows] == [True, False]  # row 0's prompt is the shorter: padded on the left
    assert all(r["rel"] < 1e-5 and r["greedy"]["verdict"] == "same" for r in rows)
    assert cli.main(["parity", "batch", *args, "--source", "transformers"]) == 0
    assert "Transformers 5." in capsys.readouterr().out


def test_batch_command_catches_padding_that_leaks_into_attention(folder, pictures, monkeypatch, capsys):
    mask_ignores_padding(monkeypatch)
    assert cli.main(["parity", "batch", *run_args(folder, pictures)[1:], "--max-new-tokens", "4"]) == 1
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines if line[:3].strip().isdigit()}
    assert rows["0"].endswith("FAIL") and rows["1"].endswith("ok")  # only the padded row changes
    assert "FAIL: rows [0] differ from the same prompt alone: the batch changes what a row computes" in lines


def test_generate_and_batch_refuse_bad_arguments_in_one_line(folder, pictures, capsys):
    for argv, message in [
        (["generate", *run_args(folder, pictures)[1:], "--max-new-tokens", "0"],
         "minillava parity generate: argument --max-new-tokens: expected a positive integer, got '0'"),
        (["batch", "--model", str(folder), "--prompt", "Hi"], "minillava parity: --prompt: give at least two"),
        (["batch", *run_args(folder, pictures[:1])[1:]],
         "minillava parity: --image: 1 image(s) cannot be shared out equally among 2 --prompt's"),
    ]:  # fmt: skip
        assert cli.main(["parity", *argv]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and len(captured.err.strip().splitlines()) == 1 and message in captured.err


def test_a_forward_that_stops_is_one_line_not_a_traceback(folder, pictures, monkeypatch, capsys):
    def broken(*args):
        raise RuntimeError("planted")

    monkeypatch.setattr(minillava.model.llava, "merge_image_features", broken)
    for command in ("generate", "batch"):
        assert cli.main(["parity", command, *run_args(folder, pictures)[1:], "--max-new-tokens", "2"]) == 2
        captured = capsys.readouterr()
        assert captured.err == "minillava parity: minillava stopped with RuntimeError: planted\n"
