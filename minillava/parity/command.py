"""``minillava parity``: the parity report from the command line.

    minillava parity --model PATH --image cat.jpg --prompt "What is shown?"      # minillava vs Transformers
    minillava parity dump --model PATH --image cat.jpg --prompt "..." --out ours.npz
    minillava parity compare reference.npz candidate.npz                         # e.g. minillava vs your port

Exit status: 0 every entry within tolerance, 1 one is not (or is missing, or has another shape),
2 nothing could be compared (bad arguments, unreadable files, Transformers not installed).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from ..loading.checkpoint import QUANTIZE_CHOICES, find_checkpoint, load_model
from ..loading.preprocess import load_image
from ..loading.processor import load_processor
from .compare import DTYPE_NAMES, INPUT_NAMES, TOLERANCES, ParityError, Report, compare_traces
from .hooks import load_transformers, minillava_trace, transformers_trace
from .npz import FORMAT, config_differences, load_trace, save_trace
from .report import format_report, plot_report

EXIT_OK, EXIT_DIFFERENT, EXIT_ERROR = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(EXIT_ERROR, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _add_input_args(parser):
    parser.add_argument("--model", required=True, help="llava-hf checkpoint folder (or hub id)")
    parser.add_argument("--image", action="append", default=[], help="a picture; repeat for several")
    parser.add_argument(
        "--prompt",
        action="append",
        help="the question; repeat for a padded batch (the images are shared out in order, equally)",
    )
    parser.add_argument("--raw-prompt", action="store_true", help="use --prompt as is (write <image> yourself)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where minillava runs")
    parser.add_argument("--dtype", choices=list(DTYPE_NAMES), default="fp32", help="Transformers' dtype")
    parser.add_argument(
        "--quantize", choices=QUANTIZE_CHOICES, help="minillava's language model quantized: see its drift per module"
    )


def _add_tolerance_args(parser):
    parser.add_argument("--tol", type=float, help="relative tolerance of every module but lm_head")
    parser.add_argument("--logits-tol", type=float, help="relative tolerance of lm_head")
    parser.add_argument(
        "--module-tol",
        action="append",
        default=[],
        metavar="GLOB=TOL",
        help="tolerance for the matching names, e.g. 'language_model.layers.*=1e-4' (repeatable, last wins)",
    )
    parser.add_argument("--allow-missing", action="store_true", help="entries only one side has do not fail")
    parser.add_argument("--plot", metavar="PNG", help="plot the relative difference of every module (matplotlib)")


def build_parsers():
    run = _Parser(
        prog="minillava parity",
        description="Compare minillava with Transformers module by module and name the first that differs. "
        "Also: `minillava parity dump ...` (save a trace) and `minillava parity compare A.npz B.npz`.",
    )
    _add_input_args(run)
    _add_tolerance_args(run)
    dump = _Parser(prog="minillava parity dump", description="Save every traced activation and the inputs to .npz.")
    _add_input_args(dump)
    dump.add_argument("--out", required=True, help="the .npz file to write")
    dump.add_argument("--source", choices=["minillava", "transformers"], default="minillava", help="who runs")
    compare = _Parser(
        prog="minillava parity compare",
        description="Compare two trace files (the first is the reference); see minillava/parity/npz.py for the format.",
    )
    compare.add_argument("reference")
    compare.add_argument("candidate")
    _add_tolerance_args(compare)
    return run, dump, compare


def _tolerances(args, precision: str):
    tol, logits_tol = TOLERANCES[precision]
    overrides = []
    for spec in args.module_tol:
        pattern, _, value = spec.rpartition("=")
        try:
            overrides.append((pattern, float(value)))
        except ValueError:
            raise ParityError(f"--module-tol {spec!r}: expected GLOB=TOL, e.g. 'lm_head=1e-3'") from None
        if not pattern:
            raise ParityError(f"--module-tol {spec!r}: expected GLOB=TOL, e.g. 'lm_head=1e-3'")
    tol = args.tol if args.tol is not None else tol
    logits_tol = args.logits_tol if args.logits_tol is not None else logits_tol
    return dict(tol=tol, logits_tol=logits_tol, overrides=overrides, allow_missing=args.allow_missing)


def _lowest_precision(*dtypes) -> str:
    for name in ("bfloat16", "float16"):
        if name in dtypes:
            return name
    return "float32"


def build_inputs(processor, images, prompts, raw: bool) -> dict:
    """Processor outputs for the prompts; without --raw-prompt each prompt goes through the chat
    template with one image entry per image it gets (all of them for one prompt)."""
    prompts = prompts or ["What is shown in the image?"]
    if raw:
        texts = list(prompts)
    else:
        if len(images) % len(prompts):
            raise ParityError(f"{len(images)} images cannot be shared out equally among {len(prompts)} prompts")
        per_prompt = len(images) // len(prompts)
        texts = []
        for prompt in prompts:
            content = [{"type": "image"}] * per_prompt + [{"type": "text", "text": prompt}]
            try:
                texts.append(processor.apply_chat_template([{"role": "user", "content": content}], True))
            except ValueError as err:
                raise ParityError(f"{err} (or use --raw-prompt)") from None
    try:
        return processor(images=images or None, text=texts, padding=True)
    except ValueError as err:
        raise ParityError(str(err)) from None


def _load(args):
    """(folder, minillava model, inputs) for the run and dump commands."""
    try:
        folder = find_checkpoint(args.model)
    except (FileNotFoundError, ValueError) as err:
        raise ParityError(f"--model {args.model}: {err}") from None
    images = []
    for path in args.image:
        try:
            images.append(load_image(path))
        except (FileNotFoundError, IsADirectoryError, ValueError, OSError) as err:
            raise ParityError(f"--image {path}: {err}") from None
    dtype = "float16" if args.device == "cuda" else "float32"
    try:
        processor = load_processor(folder)
        model = load_model(folder, device=args.device, dtype=dtype, quantize=args.quantize)
    except (FileNotFoundError, ValueError, RuntimeError, OSError, MemoryError) as err:
        raise ParityError(f"--model {folder}: {err}") from None
    return folder, model, build_inputs(processor, images, args.prompt, args.raw_prompt)


def _finish(report: Report, header, args) -> int:
    print(format_report(report, header))
    if args.plot:
        plot_report(report, args.plot)
        print(f"plot written to {args.plot}")
    return EXIT_OK if report.passed else EXIT_DIFFERENT


def run_command(args) -> int:
    folder, model, inputs = _load(args)
    ours, our_error = minillava_trace(model, inputs)
    hf_dtype = DTYPE_NAMES[args.dtype]
    ours_label = f"minillava ({model.dtype.name}, {args.device}{', ' + args.quantize if args.quantize else ''})"
    try:
        hf = load_transformers(folder, args.dtype)
    except ParityError as err:  # still show what minillava computes
        print(f"minillava parity: {err}", file=sys.stderr)
        report = compare_traces({n: ours[n] for n in INPUT_NAMES}, ours)
        report.notes.append("no reference: only minillava's shapes are shown; `minillava parity dump` saves them")
        print(format_report(report, [f"candidate: {ours_label}; reference: none"]))
        return EXIT_ERROR
    theirs, their_error = transformers_trace(hf, model.config, inputs)
    transformers = importlib.import_module("transformers")
    report = compare_traces(theirs, ours, **_tolerances(args, _lowest_precision(hf_dtype, model.dtype.name)))
    header = [f"reference: Transformers {transformers.__version__} ({hf_dtype}, cpu); candidate: {ours_label}"]
    if model.dtype.name != hf_dtype:
        report.notes.append(
            f"minillava computes in {model.dtype.name}, Transformers in {hf_dtype}: the differences include "
            f"{_lowest_precision(hf_dtype, model.dtype.name)} rounding drift, which grows layer by layer; "
            "they are not a bug as long as they stay within the (looser) tolerance"
        )
    if args.quantize:
        report.notes.append(
            f"minillava's language model is quantized ({args.quantize}): from its first layer on, the differences are "
            "the quantization error, expected above the float32 tolerances (pass --tol to set your own bound)"
        )
    report.notes += [e for e in (their_error, our_error) if e]
    return _finish(report, header, args)


def dump_command(args) -> int:
    folder, model, inputs = _load(args)
    if args.source == "transformers":
        trace, error = transformers_trace(load_transformers(folder, args.dtype), model.config, inputs)
        meta = {"producer": "transformers " + importlib.import_module("transformers").__version__,
                "dtype": DTYPE_NAMES[args.dtype], "device": "cpu"}  # fmt: skip
    else:
        trace, error = minillava_trace(model, inputs)
        meta = {"producer": "minillava", "dtype": model.dtype.name, "device": args.device}
        if args.quantize:
            meta["quantize"] = args.quantize
    if error:
        print(f"minillava parity: {error}; saving the entries recorded before it", file=sys.stderr)
    save_trace(args.out, trace, (Path(folder) / "config.json").read_text(), meta)
    n_act = len(trace) - len(INPUT_NAMES)
    print(f"wrote {args.out}: {n_act} activations, input_ids {list(inputs['input_ids'].shape)}")
    return EXIT_ERROR if error else EXIT_OK


def compare_command(args) -> int:
    (ref, ref_strings), (cand, cand_strings) = load_trace(args.reference), load_trace(args.candidate)
    metas = []
    for strings in (ref_strings, cand_strings):
        try:
            metas.append(json.loads(strings.get("meta", "{}")))
        except json.JSONDecodeError:
            metas.append({})
    precision = _lowest_precision(*(str(m.get("dtype", "float32")) for m in metas if isinstance(m, dict)))
    report = compare_traces(ref, cand, **_tolerances(args, precision))
    differences = config_differences(ref_strings.get("config"), cand_strings.get("config"))
    if differences:
        report.config_mismatch = True
        shown = "; ".join(differences[:5]) + (f"; and {len(differences) - 5} more" if len(differences) > 5 else "")
        report.notes.append(f"the dumps come from different configs: {shown}")
    for path, strings in ((args.reference, ref_strings), (args.candidate, cand_strings)):
        if strings.get("format", FORMAT) != FORMAT:
            report.notes.append(f"{path}: format {strings['format']!r}, expected {FORMAT!r}")
        if "config" not in strings:
            report.notes.append(f"{path}: no config entry, so the configs could not be checked")
    describe = lambda path, m: f"{path} ({', '.join(str(v) for v in m.values()) or 'no meta'})"  # noqa: E731
    header = [f"reference: {describe(args.reference, metas[0])}; candidate: {describe(args.candidate, metas[1])}"]
    return _finish(report, header, args)


def main(argv=None) -> int:
    """``minillava parity [dump|compare] ...``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    run, dump, compare = build_parsers()
    try:
        if argv[:1] == ["dump"]:
            return dump_command(dump.parse_args(argv[1:]))
        if argv[:1] == ["compare"]:
            return compare_command(compare.parse_args(argv[1:]))
        return run_command(run.parse_args(argv))
    except ParityError as err:
        print(f"minillava parity: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\nminillava parity: interrupted", file=sys.stderr)
        return 130
