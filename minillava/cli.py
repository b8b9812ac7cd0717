"""The command line: ask a question about a picture and watch the answer stream in.

    minillava                                   # the bundled demo model answers its sample pictures
    minillava --image cat.jpg --question "What is shown?"
    minillava --image cat.jpg --chat            # a multi-turn conversation about one picture
    minillava --model path/to/llava-1.5-7b-hf --image cat.jpg --question "..." --device cuda
    minillava --model path/to/llava-interleave-qwen-0.5b-hf --image cat.jpg   # SigLIP + Qwen2, its own template

``--model`` takes a local llava-hf folder or a hub id (downloaded with huggingface_hub when it is
installed). Every error is one line on stderr and a non-zero exit status (2 for a bad flag; --verbose shows the
whole message where the library gives more, e.g. every tensor of a checkpoint that does not match its config);
Ctrl-C stops cleanly (130), and a closed pipe (`minillava | head -c 1`) ends quietly (141, as for SIGPIPE).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from .demo import demo_folder
from .loading.checkpoint import ATTN_IMPLEMENTATIONS, QUANTIZE_CHOICES, find_checkpoint
from .loading.files import read_json
from .loading.preprocess import check_image_size, load_image
from .loading.weights import NonFiniteWeightsWarning

EXIT_ERROR, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 1, 130, 141  # 130 = 128 + SIGINT, 141 = 128 + SIGPIPE
DEFAULT_QUESTION = "What is shown in the image?"
DEMO_QUESTION = "What shapes are in the image?"  # the demo model knows only its training questions
# The library's errors while a checkpoint is read, each turned into one line naming --model.
LOAD_ERRORS = (FileNotFoundError, ValueError, TypeError, RuntimeError, OSError, MemoryError)


class CliError(Exception):
    """A problem to report on one line, without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minillava",
        description="Ask LLaVA (llava-1.5 or llava-interleave, in NumPy/CuPy) a question about a picture. "
        "With no arguments, the bundled demo model answers its sample pictures.",
    )
    parser.add_argument("--model", help="llava-hf checkpoint folder or hub id (default: the bundled demo model)")
    parser.add_argument("--image", help="picture to ask about (a file Pillow can open)")
    parser.add_argument(
        "--question", "-q", help=f"the question (default: {DEFAULT_QUESTION!r}; {DEMO_QUESTION!r} for the demo model)"
    )
    parser.add_argument("--chat", action="store_true", help="interactive multi-turn chat about --image")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cpu (NumPy) or cuda (CuPy)")
    parser.add_argument("--dtype", choices=["float32", "float16"], default=None, help="compute dtype")
    parser.add_argument(
        "--low-memory",
        action="store_true",
        help="keep the weights in the file's dtype, memory-mapped (default: chosen from the memory available)",
    )
    parser.add_argument("--memory-budget", help="plan with this much memory, e.g. 12GB (default: what is available)")
    parser.add_argument(
        "--quantize", choices=QUANTIZE_CHOICES, help="keep the language model's weights as 8- or 4-bit integers"
    )
    parser.add_argument(
        "--attn-implementation", choices=ATTN_IMPLEMENTATIONS, default="eager", help="eager, or tiled (less memory)"
    )
    parser.add_argument(
        "--cuda-graphs", action="store_true", help="with --device cuda: record each decode step once, then replay it"
    )
    parser.add_argument(
        "--fused-kernels", action="store_true", help="RMSNorm, SwiGLU, RoPE and the softmax as fused GPU kernels"
    )
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--strict", action="store_true", help="refuse weights holding NaN or inf (reads the whole checkpoint once)"
    )
    parser.add_argument("--verbose", action="store_true", help="errors in full (e.g. every mismatching tensor)")
    return parser


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (usage hint included) and exits with 2."""

    def error(self, message):
        self.exit(2, f"minillava: {message} (see minillava --help)\n")


def resolve_model(name: str | None) -> Path:
    """The checkpoint folder of --model: a local folder, a hub id, or (no --model) the bundled demo."""
    try:
        return find_checkpoint(name)
    except (FileNotFoundError, ValueError) as err:
        raise CliError(f"--model {name}: {err}" if name else f"{err}; give --model PATH") from None


def load(args, folder: Path, image=None):
    """Model and processor, with the library's own errors turned into one-line CLI errors. The picture (if any)
    is checked against the processor's settings before the model's weights are read."""
    import minillava

    dtype = args.dtype or ("float16" if args.device == "cuda" else "float32")
    shown = [-1]

    def progress(done, total):
        percent = 100 * done // max(total, 1)
        if total > 200e6 and percent // 5 != shown[0]:  # only large checkpoints are worth a progress line
            shown[0] = percent // 5
            print(f"\rloading weights {percent:3d}% of {total / 1e9:.1f} GB", end="", file=sys.stderr, flush=True)

    try:
        minillava.load_config(folder)  # first: a folder of another family is named before anything else is read
        processor = minillava.load_processor(folder)
    except LOAD_ERRORS as err:
        raise CliError(f"--model {folder}: {err}") from None
    if image is not None:  # a picture too large (or too thin) to preprocess, named by its path
        try:
            check_image_size(image, processor.image_processor_config, f"--image {args.image}")
        except ValueError as err:
            raise CliError(str(err)) from None
    try:
        warnings.simplefilter("always", NonFiniteWeightsWarning)  # shown by show_warning: one line each
        # blocked_matmul: weights kept at rest (memory-mapped float16, quantized) are multiplied a block of rows at a
        # time in a decode step, several times faster than the library's plain default (model/blocked.py)
        model = minillava.load_model(folder, device=args.device, dtype=dtype, low_memory=args.low_memory or None,
                                     progress=progress, memory_budget=args.memory_budget, quantize=args.quantize,
                                     attn_implementation=args.attn_implementation, strict=args.strict,
                                     blocked_matmul=args.device == "cpu", cuda_graphs=args.cuda_graphs,
                                     fused_kernels=args.fused_kernels)  # fmt: skip
    except LOAD_ERRORS as err:
        raise CliError(f"--model {folder}: {err}") from None
    if shown[0] >= 0:
        print(file=sys.stderr)
    return model, processor


def generation_kwargs(args) -> dict:
    return dict(
        max_new_tokens=args.max_new_tokens,
        do_sample=args.sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
    )


def open_image(path):
    try:
        return load_image(path)
    except (FileNotFoundError, IsADirectoryError, ValueError, OSError) as err:
        raise CliError(f"--image {path}: {err}") from None


def show_warning(message, category, filename, lineno, file=None, line=None):
    """The library's warnings (e.g. weights holding NaN) as one line on stderr, without Python's source line."""
    print(f"minillava: warning: {message}", file=sys.stderr)


def check_question(question: str, processor, flag: str) -> None:
    """The picture is placed by the chat template: an image marker typed into the question would ask for a
    second picture that was never given."""
    if processor.image_token in question:
        raise CliError(f"{flag}: contains {processor.image_token!r}, the image marker; the picture is placed for you")
    try:
        question.encode("utf-8")
    except UnicodeEncodeError as err:  # bytes the terminal's encoding could not decode arrive as lone surrogates
        raise CliError(f"{flag}: not valid text at character {err.start} (is the terminal's encoding UTF-8?)") from None


def answer(model, processor, image, conversation, args, out=None, is_demo=False) -> str:
    """Stream the answer to the conversation's last question (to ``out``, stdout by default); return it whole.
    An empty answer (the model ended at once) is said on stderr, with the questions the demo model knows."""
    out = out or sys.stdout
    pieces = []
    try:
        prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
        inputs = processor(images=[image] if image is not None else None, text=[prompt])
        for piece in model.stream(processor, **inputs, **generation_kwargs(args)):
            pieces.append(piece)
            print(piece, end="", file=out, flush=True)
    except (ValueError, TypeError) as err:  # bad sampling flags, a prompt longer than the context, NaN logits, ...
        if pieces:
            print(file=out, flush=True)  # end the partial answer's line before the error
        raise CliError(str(err)) from None
    print(file=out, flush=True)
    reply = "".join(pieces).strip()
    if not reply:
        asked = [read_json(meta)["question"] for meta in sorted((demo_folder() / "samples").glob("*.json"))]
        known = f": the demo model knows only questions such as {', '.join(map(repr, asked))}"
        print(f"minillava: the model gave no answer (it ended at once){known if is_demo else ''}", file=sys.stderr)
    return reply


def user_turn(question, with_image):
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": question}]
    return {"role": "user", "content": content}


def run_samples(model, processor, args):
    """No image given: answer every bundled sample picture's question."""
    samples_folder = demo_folder() / "samples"
    samples = sorted(samples_folder.glob("*.json"))
    if not samples:
        raise CliError(f"no sample pictures in {samples_folder}; give --image")
    for meta_file in samples:  # samples/NAME.json {"question": ..., "answer": ...} beside samples/NAME.png
        meta = read_json(meta_file)
        image_path = meta_file.with_suffix(".png")
        image = open_image(image_path)
        print(f"{image_path.name}\n  Q: {meta['question']}\n  A: ", end="", flush=True)
        answer(model, processor, image, [user_turn(meta["question"], True)], args, is_demo=True)


def run_chat(model, processor, image, args, is_demo=False):
    """A multi-turn conversation about one picture; an empty line or Ctrl-D ends it."""
    conversation = []
    print("Ask about the picture (empty line or Ctrl-D to quit).", file=sys.stderr)
    while True:
        try:
            question = input("you> ").strip()
        except EOFError:
            print(file=sys.stderr)
            return
        if not question:
            return
        try:
            check_question(question, processor, "your question")
        except CliError as err:  # one bad turn does not end the conversation
            print(f"minillava: {err}", file=sys.stderr)
            continue
        conversation.append(user_turn(question, with_image=not conversation))
        print("llava> ", end="", flush=True)
        reply = answer(model, processor, image, conversation, args, is_demo=is_demo)
        conversation.append({"role": "assistant", "content": [{"type": "text", "text": reply}]})


def main(argv=None) -> int:
    try:
        with warnings.catch_warnings():  # the settings below hold for this run only
            warnings.showwarning = show_warning
            # NumPy's "invalid value encountered" warnings come with NaN logits, which generation then reports in
            # one clear line; shown too, they would only repeat it less clearly.
            warnings.filterwarnings("ignore", "(invalid value|overflow|divide by zero) encountered", RuntimeWarning)
            return _main(sys.argv[1:] if argv is None else list(argv))
    except KeyboardInterrupt:
        print("\nminillava: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of stdout went away (`minillava | head -c 1`): stop quietly, as a program killed by SIGPIPE
        # would. Python would still try to flush stdout at exit and complain, so point it at /dev/null first.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # a stdout with no file descriptor (a captured one): nothing to flush
            pass
        return EXIT_BROKEN_PIPE


def _main(argv: list[str]) -> int:
    if argv[:1] == ["parity"]:  # `minillava parity ...`: the module-by-module comparison (minillava/parity/)
        from .parity.command import main as parity_main

        return parity_main(argv[1:])
    parser = build_parser()
    parser.__class__ = _Parser  # one-line errors for unknown or malformed flags
    args = parser.parse_args(argv)
    try:
        if args.chat and not args.image:
            raise CliError("--chat needs --image")
        if args.question and not args.image:
            raise CliError("--question needs --image (or run without arguments for the demo samples)")
        if args.chat and (sys.stdin is None or sys.stdin.closed):
            raise CliError("--chat reads the questions from stdin, which is closed")
        image = open_image(args.image) if args.image else None
        folder = resolve_model(args.model)
        model, processor = load(args, folder, image)
        is_demo = folder.resolve() == demo_folder()
        if image is None:
            run_samples(model, processor, args)
        elif args.chat:
            run_chat(model, processor, image, args, is_demo)
        else:
            question = args.question or (DEMO_QUESTION if is_demo else DEFAULT_QUESTION)
            check_question(question, processor, "--question")
            answer(model, processor, image, [user_turn(question, True)], args, is_demo=is_demo)
        return 0
    except CliError as err:
        lines = str(err).splitlines()
        more = f" ({len(lines) - 1} more lines: --verbose shows them)" if len(lines) > 1 and not args.verbose else ""
        print(f"minillava: {str(err) if args.verbose else lines[0]}{more}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
