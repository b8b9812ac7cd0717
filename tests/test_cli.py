"""The command line: answers stream to stdout; every bad input is one line on stderr and a non-zero exit."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import minillava
from minillava import cli
from minillava.demo import demo_folder


@pytest.fixture(scope="module")
def folder(tiny_checkpoint):
    return tiny_checkpoint("chat", "hub", "float16", True)


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    path = tmp_path_factory.mktemp("pics") / "shapes.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def ours(folder):
    return minillava.load_model(folder), minillava.load_processor(folder)


def turn(question, with_image=False):
    content = [{"type": "image"}] if with_image else []
    return {"role": "user", "content": content + [{"type": "text", "text": question}]}


def expected_answer(ours, picture, conversation, max_new_tokens, **kwargs):
    """What the library answers (greedy unless kwargs say otherwise): the text the CLI must print."""
    model, processor = ours
    if isinstance(conversation, str):
        conversation = [turn(conversation, with_image=True)]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(images=[Image.open(picture)], text=[prompt])
    ids = model.generate(**inputs, max_new_tokens=max_new_tokens, **kwargs)
    return processor.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def test_question_about_a_picture(folder, picture, ours, capsys):
    argv = ["--model", str(folder), "--image", str(picture), "-q", "What is shown?", "--max-new-tokens", "12"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert out == expected_answer(ours, picture, "What is shown?", 12) + "\n"


@pytest.mark.parametrize("quantize", ["int8", "nf4"])
def test_quantized_answers_are_the_library_s(folder, picture, quantize, capsys):
    """--quantize loads the quantized model (its answer is the library's quantized one, weights multiplied in
    blocks as the CLI does), and --attn-implementation tiled answers as eager does."""
    argv = ["--model", str(folder), "--image", str(picture), "-q", "What is shown?", "--max-new-tokens", "12"]
    assert cli.main([*argv, "--quantize", quantize]) == 0
    quantized = minillava.load_model(folder, quantize=quantize), minillava.load_processor(folder)
    assert capsys.readouterr().out == expected_answer(quantized, picture, "What is shown?", 12) + "\n"
    assert cli.main([*argv, "--attn-implementation", "tiled"]) == 0
    tiled = capsys.readouterr().out
    assert cli.main(argv) == 0
    assert tiled == capsys.readouterr().out


def test_chat_keeps_the_conversation(folder, picture, ours, monkeypatch, capsys):
    """The second question is asked with the picture, the first question and the first answer before it: its
    prompt is the whole conversation's, and its answer is what generation gives on that prompt."""
    questions = iter(["What is shown?", "And the colour?", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(questions))
    prompts = []  # the input_ids of each turn, as the CLI hands them to the model
    stream = minillava.LlavaModel.stream

    def spy(self, processor, *args, **kwargs):
        prompts.append(np.array(kwargs["input_ids"]))
        return stream(self, processor, *args, **kwargs)

    monkeypatch.setattr(minillava.LlavaModel, "stream", spy)
    assert cli.main(["--model", str(folder), "--image", str(picture), "--chat", "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr().out
    assert out.count("llava> ") == 2

    first = expected_answer(ours, picture, "What is shown?", 6)
    answered = {"role": "assistant", "content": [{"type": "text", "text": first.strip()}]}
    history = [turn("What is shown?", with_image=True), answered, turn("And the colour?")]
    second = expected_answer(ours, picture, history, 6)
    assert out == f"llava> {first}\nllava> {second}\n"
    _, processor = ours
    whole = processor.apply_chat_template(history, add_generation_prompt=True)
    assert whole == f"USER: <image>\nWhat is shown? ASSISTANT: {first.strip()} USER: And the colour? ASSISTANT:"
    assert len(prompts) == 2
    np.testing.assert_array_equal(prompts[1], processor(images=[Image.open(picture)], text=[whole])["input_ids"])
    # Without the history the second answer would differ: the output check above tells them apart.
    assert second != expected_answer(ours, picture, "And the colour?", 6)


@pytest.fixture(scope="module")
def interleave_folder(tiny_checkpoint):
    """A tiny llava-interleave checkpoint (SigLIP + Qwen2) with the processor files as the hub publishes them."""
    return tiny_checkpoint("interleave_chat", "hub", "bfloat16", False)


def test_interleave_folder_answers_with_its_template(interleave_folder, picture, hf_model, monkeypatch, capsys):
    """--model with a llava-interleave folder: the question goes through that folder's ChatML template (no BOS),
    and the printed answer is Transformers' greedy answer to that prompt; --chat keeps the history in that format."""
    import torch

    from .fixtures import tiny_tokenizer

    prompts = []  # the input_ids of each turn, as the CLI hands them to the model
    stream = minillava.LlavaModel.stream

    def spy(self, processor, *args, **kwargs):
        prompts.append(np.array(kwargs["input_ids"]))
        return stream(self, processor, *args, **kwargs)

    monkeypatch.setattr(minillava.LlavaModel, "stream", spy)
    argv = [
        "--model",
        str(interleave_folder),
        "--image",
        str(picture),
        "-q",
        "What is shown?",
        "--max-new-tokens",
        "12",
    ]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out

    prompt = "<|im_start|>user\n<image>\nWhat is shown?<|im_end|>\n<|im_start|>assistant\n"
    hf_processor = tiny_tokenizer.reference_processor(interleave_folder)
    assert hf_processor.apply_chat_template([turn("What is shown?", True)], add_generation_prompt=True) == prompt
    ref = hf_processor(images=[str(picture)], text=[prompt], return_tensors="pt")
    np.testing.assert_array_equal(prompts[0], ref["input_ids"].numpy())
    with torch.no_grad():
        ref_ids = hf_model(interleave_folder).generate(**ref, max_new_tokens=12, do_sample=False)
    answer = hf_processor.decode(ref_ids[0, ref["input_ids"].shape[1] :], skip_special_tokens=True)
    assert out == answer + "\n" and answer.strip()

    questions = iter(["What is shown?", "And the colour?", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(questions))
    argv = ["--model", str(interleave_folder), "--image", str(picture), "--chat", "--max-new-tokens", "6"]
    assert cli.main(argv) == 0
    first = capsys.readouterr().out.split("\n")[0].removeprefix("llava> ").strip()
    history = [
        turn("What is shown?", with_image=True),
        {"role": "assistant", "content": [{"type": "text", "text": first}]},
        turn("And the colour?"),
    ]
    whole = minillava.load_processor(interleave_folder).apply_chat_template(history, add_generation_prompt=True)
    assert whole == (
        f"<|im_start|>user\n<image>\nWhat is shown?<|im_end|>\n<|im_start|>assistant\n\n{first}<|im_end|>\n"
        "<|im_start|>user\n\nAnd the colour?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert whole == hf_processor.apply_chat_template(history, add_generation_prompt=True)
    np.testing.assert_array_equal(prompts[-1], hf_processor(images=[str(picture)], text=[whole])["input_ids"])


def test_sampling_flags_and_seed_are_reproducible(folder, picture, ours, capsys):
    """--sample --temperature --seed give what the library samples with those settings (not the greedy answer),
    the same each run, and another draw with another seed."""

    def argv(seed):
        return ["--model", str(folder), "--image", str(picture), "--sample", "--temperature", "1.5", "--seed", seed,
                "--max-new-tokens", "8"]  # fmt: skip

    assert cli.main(argv("3")) == 0
    first = capsys.readouterr().out
    assert cli.main(argv("3")) == 0
    assert capsys.readouterr().out == first

    question = cli.DEFAULT_QUESTION
    sampled = expected_answer(ours, picture, question, 8, do_sample=True, temperature=1.5, seed=3)
    assert first == sampled + "\n"
    assert sampled != expected_answer(ours, picture, question, 8)  # the greedy answer differs
    assert sampled != expected_answer(ours, picture, question, 8, do_sample=True, temperature=1.0, seed=3)
    assert cli.main(argv("4")) == 0
    expected = expected_answer(ours, picture, question, 8, do_sample=True, temperature=1.5, seed=4)
    assert capsys.readouterr().out == expected + "\n" != first


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--image", "no/such/picture.png"], "no/such/picture.png"),
        (["--image", "{text}"], "picture.txt"),
        (["--model", "{tmp}", "--image", "{picture}"], "not a llava-hf checkpoint"),
        (["--model", "no-such-folder", "--image", "{picture}"], "no-such-folder"),
        (["--image", "{picture}", "--device", "cuda"], "CuPy"),
        (["--image", "{picture}", "--top-p", "2"], "top_p"),
        (["--image", "{picture}", "--max-new-tokens", "0"], "max_new_tokens"),
        (["--chat"], "--chat needs --image"),
        (["--image", "{picture}", "-q", "What is <image> here?"], "--question: contains '<image>', the image marker"),
        (["--image", "{picture}", "--seed", "-1"], "seed must be None or a non-negative integer, got -1"),
    ],
)
def test_bad_input_is_one_line_on_stderr(folder, picture, tmp_path, capsys, argv, message):
    text = tmp_path / "picture.txt"
    text.write_text("not a picture")
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = [a.format(text=text, tmp=empty, picture=picture) for a in argv]
    if "--model" not in argv:
        argv = ["--model", str(folder), *argv]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("minillava: ") and message in err


def test_unknown_flag_exits_2_with_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--no-such-flag"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--no-such-flag" in err


def test_ctrl_c_during_generation_stops_cleanly(folder, picture, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        yield "partial"
        raise KeyboardInterrupt

    monkeypatch.setattr(minillava.LlavaModel, "stream", interrupted)
    assert cli.main(["--model", str(folder), "--image", str(picture)]) == 130
    captured = capsys.readouterr()
    assert captured.out == "partial" and captured.err.strip() == "minillava: interrupted"


def test_python_dash_m_runs_without_a_traceback(folder):
    result = subprocess.run(
        [sys.executable, "-m", "minillava", "--model", str(folder), "--image", "missing.png"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "missing.png" in result.stderr


def test_no_arguments_answers_the_bundled_samples(capsys):
    """`minillava` alone: the demo model answers each sample picture's question (they are chosen so that
    it answers them right)."""
    import json

    assert cli.main([]) == 0
    out = capsys.readouterr().out
    for meta in sorted((demo_folder() / "samples").glob("*.json")):
        record = json.loads(meta.read_text())
        assert f"{meta.stem}.png\n  Q: {record['question']}\n  A: {record['answer']}\n" in out


def test_cuda_graphs_and_fused_kernels_flags_answer_the_bundled_samples_the_same(capsys):
    """--cuda-graphs (the fixed-shape decode step: recorded on a GPU, unrecorded on the CPU) and --fused-kernels
    (the same bodies, unfused, on the CPU): the same answers."""
    assert cli.main(["--max-new-tokens", "12"]) == 0
    plain = capsys.readouterr().out
    assert cli.main(["--max-new-tokens", "12", "--cuda-graphs"]) == 0
    assert capsys.readouterr().out == plain
    assert cli.main(["--max-new-tokens", "12", "--cuda-graphs", "--fused-kernels"]) == 0
    assert capsys.readouterr().out == plain


def test_demo_without_a_question_captions_the_picture(capsys):
    """With the demo model and no --question, the question is one it was trained on (its caption question)."""
    import json

    picture = demo_folder() / "samples" / "1_caption.png"
    record = json.loads(picture.with_suffix(".json").read_text())
    assert record["question"] == cli.DEMO_QUESTION
    for argv in (["--image", str(picture)], ["--model", str(demo_folder()), "--image", str(picture)]):
        assert cli.main(argv) == 0
        assert capsys.readouterr().out.strip() == record["answer"]


def broken_copy(folder, tmp_path, edit):
    """A copy of the checkpoint folder with one file edited: edit(copy)."""
    import shutil

    copy = shutil.copytree(folder, tmp_path / "broken")
    edit(copy)
    return copy


def test_a_config_that_mismatches_the_weights_is_one_line_and_verbose_shows_all(folder, picture, tmp_path, capsys):
    import json

    def wider(copy):
        config = json.loads((copy / "config.json").read_text())
        config["text_config"]["intermediate_size"] += 8
        (copy / "config.json").write_text(json.dumps(config))

    argv = ["--model", str(broken_copy(folder, tmp_path, wider)), "--image", str(picture)]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checkpoint does not match the config: 6 problem(s), the first: " in err
    assert err.endswith("(5 more lines: --verbose shows them)\n")
    assert cli.main([*argv, "--verbose"]) == 1
    assert capsys.readouterr().err.count("\n") == 6


def test_non_finite_weights_warn_in_one_line_and_the_answer_is_one_error(folder, picture, tmp_path, capsys):
    from safetensors.numpy import load_file, save_file

    key = "language_model.model.layers.0.mlp.up_proj.weight"

    def poison(copy):
        for shard in copy.glob("model-*.safetensors"):
            weights = load_file(shard)
            if key in weights:
                weights[key][0, 0] = np.inf
                save_file(weights, shard, metadata={"format": "pt"})

    argv = ["--model", str(broken_copy(folder, tmp_path, poison)), "--image", str(picture)]
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    warning, error = captured.err.splitlines()
    assert warning.startswith("minillava: warning: 1 weight tensor(s) hold NaN or infinite values") and key in warning
    assert error.startswith("minillava: the logits at the prompt's last position are NaN or infinite")
    assert captured.out == ""
    assert cli.main([*argv, "--strict"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "hold NaN or infinite values" in err and key in err


def test_an_empty_answer_is_said_on_stderr(monkeypatch, capsys):
    """When the model ends its answer at once, the CLI says so (for the demo model: which questions it knows)."""
    monkeypatch.setattr(minillava.LlavaModel, "stream", lambda *args, **kwargs: iter([]))
    picture = demo_folder() / "samples" / "0_colour.png"
    assert cli.main(["--image", str(picture), "-q", "What is shown in this picture?"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "\n"
    assert captured.err.startswith("minillava: the model gave no answer (it ended at once): the demo model knows")
    assert cli.DEMO_QUESTION in captured.err and captured.err.count("\n") == 1


def test_chat_refuses_an_image_marker_and_goes_on(folder, picture, monkeypatch, capsys):
    questions = iter(["Look at <image> please", "What is shown?", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(questions))
    assert cli.main(["--model", str(folder), "--image", str(picture), "--chat", "--max-new-tokens", "3"]) == 0
    captured = capsys.readouterr()
    assert "minillava: your question: contains '<image>'" in captured.err
    assert captured.out.count("llava> ") == 1


def test_ctrl_c_while_the_arguments_are_read(monkeypatch, capsys):
    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.argparse.ArgumentParser, "parse_args", interrupted)
    assert cli.main(["--image", "x.png"]) == 130
    assert capsys.readouterr().err.strip() == "minillava: interrupted"


def run_shell(command, timeout=300):
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=timeout)


def test_chat_with_stdin_closed_is_one_line(folder, picture):
    result = run_shell(f"{sys.executable} -m minillava --model {folder} --image {picture} --chat <&-")
    assert result.returncode == 1
    assert result.stderr == "minillava: --chat reads the questions from stdin, which is closed\n"


def test_a_closed_pipe_ends_quietly_with_the_sigpipe_status():
    """`minillava | head -c 1`: head leaves after one byte; the CLI stops writing, without a traceback, with the
    status of a program that SIGPIPE ends (141), as other command-line tools do."""
    result = run_shell(f'{sys.executable} -m minillava | head -c 1; echo " ${{PIPESTATUS[0]}}"')
    assert result.stdout.endswith(" 141\n") and len(result.stdout) == len("0 141\n")
    assert result.stderr == ""


def test_a_picture_too_thin_to_resize_is_named_by_its_path(folder, tmp_path, monkeypatch, capsys):
    """A 1 x 1,000,000 PNG is a few KB, but its shortest-edge resize would be 28 x 28,000,000 pixels: refused with its
    path, before the model's weights are read."""
    monkeypatch.setattr(minillava, "load_model", lambda *args, **kwargs: pytest.fail("the weights were read"))
    thin = tmp_path / "thin.png"
    Image.fromarray(np.zeros((1, 1_000_000, 3), np.uint8)).save(thin)
    assert cli.main(["--model", str(folder), "--image", str(thin)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"minillava: --image {thin} resized to a shortest edge of 28")


def test_a_question_that_is_not_valid_text(folder, picture, capsys):
    """Bytes the terminal's encoding could not decode reach Python as lone surrogates."""
    assert cli.main(["--model", str(folder), "--image", str(picture), "-q", "what \udcff is it"]) == 1
    err = capsys.readouterr().err
    assert err == "minillava: --question: not valid text at character 5 (is the terminal's encoding UTF-8?)\n"


def test_ctrl_c_while_the_command_line_is_imported(monkeypatch, capsys):
    """The command starts in __main__.py, which imports cli.py (NumPy, Pillow, tokenizers) under its own Ctrl-C
    handler; and `import minillava` imports nothing heavy, so the window before it is Python's own start-up."""
    from minillava import __main__ as entry

    class Interrupted:
        def __getattr__(self, name):
            raise KeyboardInterrupt

    monkeypatch.setitem(sys.modules, "minillava.cli", Interrupted())
    assert entry.main(["--image", "x.png"]) == 130
    assert capsys.readouterr().err.strip() == "minillava: interrupted"
    probe = "import sys, minillava; print(sorted(m for m in ('numpy', 'PIL', 'tokenizers') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.stdout == "[]\n"
