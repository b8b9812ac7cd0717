"""``minillava parity``: the parity report from the command line.

    minillava parity --model PATH --image cat.jpg --prompt "What is shown?"      # minillava vs Transformers
    minillava parity dump --model PATH --image cat.jpg --prompt "..." --out ours.npz
    minillava parity compare reference.npz candidate.npz [--model PATH]          # e.g. minillava vs your port
    minillava parity generate --model PATH --image cat.jpg --prompt "..."        # where greedy tokens first part
    minillava parity batch --model PATH --image a.jpg --image b.jpg --prompt "..." --prompt "..."

The module reports (the first and ``compare``) start with the config fields the two sides resolve differently,
then the inputs, then every module in data-flow order, end to end and in isolation (isolated.py), and name the
culprit. ``--json FILE`` writes every row, the config diff and the verdict for a porting project's CI.

Exit status: 0 every entry within tolerance, 1 one is not (or is missing, or has another shape, or the configs
differ; the greedy tokens part where the logits are out of tolerance; a batch row differs from its prompt alone),
2 nothing could be compared (bad arguments, unreadable files, Transformers not installed).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

from ..loading.checkpoint import QUANTIZE_CHOICES, find_checkpoint, load_model
from ..loading.preprocess import load_image
from ..loading.processor import load_processor
from .compare import DTYPE_NAMES, INPUT_NAMES, ISOLATED_TOLERANCES, TOLERANCES, ParityError, Report, compare_traces
from .generation import batch_json, batch_rows, compare_generations, divergence_json, format_divergence
from .hooks import (
    load_transformers,
    minillava_greedy,
    minillava_logits,
    minillava_trace,
    transformers_greedy,
    transformers_logits,
    transformers_trace,
)
from .isolated import isolated_differences
from .npz import FORMAT, config_differences, load_trace, save_trace
from .report import REPORT_FORMAT, fmt, format_report, json_ready, plot_report, report_json, wrap

EXIT_OK, EXIT_DIFFERENT, EXIT_ERROR = 0, 1, 2
SUBCOMMANDS = ("dump", "compare", "generate", "batch")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(EXIT_ERROR, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a relative tolerance (a number >= 0), got {text!r}") from None
    if not value >= 0 or value == float("inf"):  # NaN would pass nothing, inf everything
        raise argparse.ArgumentTypeError(f"expected a relative tolerance (a number >= 0), got {text!r}")
    return value


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
    parser.add_argument("--tol", type=_tolerance, help="relative tolerance of every module but lm_head, end to end")
    parser.add_argument("--logits-tol", type=_tolerance, help="relative tolerance of lm_head, end to end")
    parser.add_argument("--isolated-tol", type=_tolerance, help="relative tolerance of every module but lm_head, alone")
    parser.add_argument("--isolated-logits-tol", type=_tolerance, help="relative tolerance of lm_head, alone")
    parser.add_argument(
        "--module-tol",
        action="append",
        default=[],
        metavar="GLOB=TOL",
        help="tolerance for the matching names, end to end and alone, e.g. 'language_model.layers.*=1e-4' "
        "(repeatable, last wins)",
    )
    parser.add_argument("--allow-missing", action="store_true", help="entries only one side has do not fail")
    parser.add_argument("--plot", metavar="PNG", help="plot every module's difference, end to end and alone")
    parser.add_argument("--json", metavar="FILE", help="write every row, the config diff and the verdict as JSON")


def build_parsers() -> dict:
    """{"run", "dump", "compare", "generate", "batch"}: the parser of each command."""
    run = _Parser(
        prog="minillava parity",
        description="Compare minillava with Transformers module by module and name the module that is wrong. "
        "Also: `minillava parity dump ...` (save a trace), `minillava parity compare A.npz B.npz`, "
        "`minillava parity generate ...` (where greedy tokens part) and `minillava parity batch ...` (each row of a "
        "padded batch against the same prompt alone).",
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
    compare.add_argument(
        "--model", help="the reference's checkpoint folder: recompute each module from the candidate's own input"
    )
    _add_tolerance_args(compare)
    generate = _Parser(
        prog="minillava parity generate",
        description="Greedy generation by minillava and Transformers: the first step where the tokens differ, the "
        "two tokens, the reference's logit margin between them and both sides' top-5 (a near-tie or a fault).",
    )
    _add_input_args(generate)
    _add_generation_args(generate)
    batch = _Parser(
        prog="minillava parity batch",
        description="Each row of a left-padded batch of the --prompt's against the same prompt alone: logits at the "
        "real positions and greedy tokens (padding leaking into attention, wrong positions, images in the wrong row).",
    )
    _add_input_args(batch)
    _add_generation_args(batch)
    batch.add_argument("--source", choices=["minillava", "transformers"], default="minillava", help="who runs")
    return {"run": run, "dump": dump, "compare": compare, "generate": generate, "batch": batch}


def _add_generation_args(parser):
    parser.add_argument("--max-new-tokens", type=_positive_int, default=20, help="greedy steps (default 20)")
    parser.add_argument("--logits-tol", type=_tolerance, help="relative tolerance of each step's logits")
    parser.add_argument("--json", metavar="FILE", help="write the result as JSON")


def _overrides(args) -> list:
    overrides = []
    for spec in args.module_tol:
        pattern, _, value = spec.rpartition("=")
        try:
            overrides.append((pattern, _tolerance(value)))
        except argparse.ArgumentTypeError:
            raise ParityError(f"--module-tol {spec!r}: expected GLOB=TOL, e.g. 'lm_head=1e-3'") from None
        if not pattern:
            raise ParityError(f"--module-tol {spec!r}: expected GLOB=TOL, e.g. 'lm_head=1e-3'")
    return overrides


def _tolerances(args, precision: str) -> dict:
    """compare_traces' tolerance arguments: the defaults of ``precision``, or what the command line says."""
    tol, logits_tol = TOLERANCES[precision]
    tol = args.tol if args.tol is not None else tol
    logits_tol = args.logits_tol if args.logits_tol is not None else logits_tol
    return dict(tol=tol, logits_tol=logits_tol, overrides=_overrides(args), allow_missing=args.allow_missing)


def _isolated_tolerances(args, precision: str) -> dict:
    """isolated_differences' tolerance arguments: one module's rounding at ``precision``, or the command line's."""
    tol, logits_tol = ISOLATED_TOLERANCES[precision]
    tol = args.isolated_tol if args.isolated_tol is not None else tol
    logits_tol = args.isolated_logits_tol if args.isolated_logits_tol is not None else logits_tol
    return dict(tol=tol, logits_tol=logits_tol, overrides=_overrides(args))


def _lowest_precision(*dtypes) -> str:
    for name in ("bfloat16", "float16"):
        if name in dtypes:
            return name
    return "float32"


def _check_output(option: str, path) -> None:
    """Refuse an output path that cannot be written, before any compute: a folder, or a file in a folder that
    does not exist (the report would otherwise end in a traceback after the whole run)."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise ParityError(f"{option} {path}: is a folder; give a file name")
    folder = path.parent
    if not folder.exists():
        raise ParityError(f"{option} {path}: the folder {folder} does not exist")
    if not folder.is_dir():
        raise ParityError(f"{option} {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK):
        raise ParityError(f"{option} {path}: cannot write in the folder {folder}")


def _check_args(args) -> None:
    """What the command line alone can get wrong, refused before a model is loaded: outputs that cannot be
    written, --module-tol specs, images that cannot be shared out among the prompts."""
    for option in ("out", "json", "plot"):
        _check_output(f"--{option}", getattr(args, option, None))
    if hasattr(args, "module_tol"):
        _overrides(args)
    images, prompts = getattr(args, "image", []), getattr(args, "prompt", None) or [None]
    if not getattr(args, "raw_prompt", True) and len(images) % len(prompts):
        raise ParityError(
            f"--image: {len(images)} image(s) cannot be shared out equally among {len(prompts)} --prompt's"
        )


def _write_json(path, data: dict) -> None:
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(json_ready(data), f, indent=1, allow_nan=False)  # strict JSON: non-finite numbers as null
            f.write("\n")
    except OSError as err:
        raise ParityError(f"--json {path}: cannot write it ({type(err).__name__}: {err})") from None
    print(f"JSON written to {path}")


def build_inputs(processor, images, prompts, raw: bool, padding_side: str | None = None) -> dict:
    """Processor outputs for the prompts; without --raw-prompt each prompt goes through the chat
    template with one image entry per image it gets (all of them for one prompt)."""
    prompts = prompts or ["What is shown in the image?"]
    if raw:
        texts = list(prompts)
    else:
        if len(images) % len(prompts):
            raise ParityError(
                f"--image: {len(images)} image(s) cannot be shared out equally among {len(prompts)} --prompt's"
            )
        per_prompt = len(images) // len(prompts)
        texts = []
        for prompt in prompts:
            content = [{"type": "image"}] * per_prompt + [{"type": "text", "text": prompt}]
            try:
                texts.append(processor.apply_chat_template([{"role": "user", "content": content}], True))
            except ValueError as err:
                raise ParityError(f"{err} (or use --raw-prompt)") from None
    try:
        return processor(images=images or None, text=texts, padding=True, padding_side=padding_side)
    except ValueError as err:
        raise ParityError(str(err)) from None


def _load(args):
    """(folder, minillava model, processor, images) for the commands that run a checkpoint."""
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
    return folder, model, processor, images


def _minillava_label(model, args) -> str:
    return f"minillava ({model.dtype.name}, {args.device}{', ' + args.quantize if args.quantize else ''})"


def _transformers_label(args) -> str:
    return f"Transformers {importlib.import_module('transformers').__version__} ({DTYPE_NAMES[args.dtype]}, cpu)"


def _finish(report: Report, header, args) -> int:
    status = EXIT_OK if report.passed else EXIT_DIFFERENT
    print(format_report(report, header))
    if args.plot:
        plot_report(report, args.plot)
        print(f"plot written to {args.plot}")
    if args.json:
        _write_json(args.json, report_json(report, header, status))
    return status


def run_command(args) -> int:
    _check_args(args)
    folder, model, processor, images = _load(args)
    inputs = build_inputs(processor, images, args.prompt, args.raw_prompt)
    ours, our_error = minillava_trace(model, inputs)
    hf_dtype = DTYPE_NAMES[args.dtype]
    ours_label = _minillava_label(model, args)
    try:
        hf = load_transformers(folder, args.dtype)
    except ParityError as err:  # still show what minillava computes
        print(f"minillava parity: {err}", file=sys.stderr)
        report = compare_traces({n: ours[n] for n in INPUT_NAMES}, ours, allow_missing=True)
        report.notes.append("no reference: only minillava's entries are listed; `minillava parity dump` saves them")
        print(format_report(report, [f"candidate: {ours_label}; reference: none"], with_verdict=False))
        return EXIT_ERROR
    theirs, their_error = transformers_trace(hf, model.config, inputs)
    precision = _lowest_precision(hf_dtype, model.dtype.name)
    # minillava's modules (the candidate's) fed Transformers' inputs: recomputing from minillava's own inputs
    # would only repeat minillava's forward (isolated.py).
    isolated = isolated_differences(model, theirs, **_isolated_tolerances(args, precision))
    report = compare_traces(theirs, ours, **_tolerances(args, precision), isolated=isolated)
    report.isolated_of = "Transformers' own input to it, compared with Transformers' output"
    report.config_differences = config_differences(hf.config.to_dict(), model.config)
    report.config_checked = True
    header = [f"reference: {_transformers_label(args)}; candidate: {ours_label}"]
    if model.dtype.name != hf_dtype:
        report.notes.append(
            f"minillava computes in {model.dtype.name}, Transformers in {hf_dtype}: the differences include "
            f"{precision} rounding drift, which grows layer by layer; the isolated column shows one module's share"
        )
    if args.quantize:
        report.notes.append(
            f"minillava's language model is quantized ({args.quantize}): from its first layer on, the differences are "
            "the quantization error, expected above the float32 tolerances (pass --tol and --isolated-tol to set "
            "your own bounds)"
        )
    report.notes += [e for e in (their_error, our_error) if e]
    return _finish(report, header, args)


def dump_command(args) -> int:
    _check_args(args)
    folder, model, processor, images = _load(args)
    inputs = build_inputs(processor, images, args.prompt, args.raw_prompt)
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
    try:
        save_trace(args.out, trace, (Path(folder) / "config.json").read_text(), meta)
    except OSError as err:
        raise ParityError(f"--out {args.out}: cannot write it ({type(err).__name__}: {err})") from None
    n_act = len(trace) - len(INPUT_NAMES)
    print(f"wrote {args.out}: {n_act} activations, input_ids {list(inputs['input_ids'].shape)}")
    return EXIT_ERROR if error else EXIT_OK


def compare_command(args) -> int:
    _check_args(args)
    ref, ref_strings = load_trace(args.reference, "reference")
    cand, cand_strings = load_trace(args.candidate, "candidate")
    metas = [json.loads(strings.get("meta", "{}")) for strings in (ref_strings, cand_strings)]  # checked on load
    cand_dtype = str(metas[1].get("dtype", "float32"))
    precision = _lowest_precision(str(metas[0].get("dtype", "float32")), cand_dtype)
    isolated, isolated_of = None, ""
    if args.model:
        model = _isolated_model(args.model, ref_strings.get("config"), args.reference)
        # minillava (float32) stands for the reference: one module's rounding of the candidate's precision
        tolerances = _isolated_tolerances(args, _lowest_precision(cand_dtype, model.dtype.name))
        isolated = isolated_differences(model, cand, **tolerances)
        isolated_of = f"the candidate's own input to it, with the weights of {args.model}"
    report = compare_traces(ref, cand, **_tolerances(args, precision), isolated=isolated)
    report.isolated_of = isolated_of
    report.config_differences = config_differences(ref_strings.get("config"), cand_strings.get("config"))
    report.config_checked = "config" in ref_strings and "config" in cand_strings
    if not args.model:
        report.notes.append(
            "add --model FOLDER (the reference's checkpoint) to recompute each module from the candidate's own input: "
            "the isolated column, which tells a wrong module from one that only inherits drift"
        )
    for path, strings in ((args.reference, ref_strings), (args.candidate, cand_strings)):
        if "format" not in strings:
            report.notes.append(f"{path}: no format entry; read as {FORMAT!r}")
        elif strings["format"] != FORMAT:
            report.notes.append(f"{path}: format {strings['format']!r}, expected {FORMAT!r}")
        if "config" not in strings:
            report.notes.append(f"{path}: no config entry, so the configs could not be checked")
    describe = lambda path, m: f"{path} ({', '.join(str(v) for v in m.values()) or 'no meta'})"  # noqa: E731
    header = [f"reference: {describe(args.reference, metas[0])}; candidate: {describe(args.candidate, metas[1])}"]
    return _finish(report, header, args)


def _isolated_model(folder_arg, reference_config, reference_path):
    """minillava on the CPU in float32 from --model, for the isolated differences; its config must be the
    reference dump's (else it would recompute another model's modules)."""
    try:
        folder = find_checkpoint(folder_arg)
        model = load_model(folder)
    except (FileNotFoundError, ValueError, RuntimeError, OSError, MemoryError) as err:
        raise ParityError(f"--model {folder_arg}: {err}") from None
    differences = config_differences(reference_config, model.config)
    if differences:
        field, theirs, ours = differences[0]
        raise ParityError(
            f"--model {folder_arg}: not the reference's checkpoint: {field} is {ours}, {reference_path} says "
            f"{theirs} ({len(differences)} field(s) differ)"
        )
    return model


def _prompt_images(processor, images, prompts, raw: bool) -> list[list]:
    """The images of each prompt, as build_inputs shares them out: equally in order, or (raw prompts) as many as
    the prompt writes image tokens."""
    prompts = prompts or ["What is shown in the image?"]
    if not raw:
        per_prompt = len(images) // len(prompts)  # a whole number: _check_args refused the rest
        return [images[i * per_prompt : (i + 1) * per_prompt] for i in range(len(prompts))]
    shares, start = [], 0
    for prompt in prompts:
        count = prompt.count(processor.image_token)
        shares.append(images[start : start + count])
        start += count
    return shares


def _pad_id(model):
    """What a finished row emits, as minillava's generate chooses it (so that Transformers pads alike)."""
    defaults = model.generation_defaults
    if defaults.pad_token_id is not None:
        return defaults.pad_token_id
    return defaults.eos_token_id[0] if defaults.eos_token_id else None


def generate_command(args) -> int:
    _check_args(args)
    folder, model, processor, images = _load(args)
    inputs = build_inputs(processor, images, args.prompt, args.raw_prompt)
    hf = load_transformers(folder, args.dtype)
    precision = _lowest_precision(DTYPE_NAMES[args.dtype], model.dtype.name)
    tol = args.logits_tol if args.logits_tol is not None else TOLERANCES[precision][1]
    ours, our_logits = minillava_greedy(model, inputs, args.max_new_tokens)
    theirs, their_logits = transformers_greedy(hf, inputs, args.max_new_tokens, _pad_id(model))
    eos = model.generation_defaults.eos_token_id
    rows = compare_generations(theirs, ours, their_logits, our_logits, tol, eos)
    differences = config_differences(hf.config.to_dict(), model.config)
    header = [
        f"reference: {_transformers_label(args)}; candidate: {_minillava_label(model, args)}",
        f"greedy generation, {args.max_new_tokens} new tokens at most, {len(rows)} row(s); logits tolerance {tol:.2g}",
    ]
    lines = list(header)
    lines += [f"config: {field}: {a} (reference) | {b} (candidate)" for field, a, b in differences]
    for row in rows:
        lines += format_divergence(row, processor.decode)
    failed = [row.row for row in rows if row.failed]
    if differences:
        lines.append(f"FAIL: the two sides resolved the config differently: {', '.join(f for f, _, _ in differences)}")
    if failed:
        lines.append(f"FAIL: rows {failed}: the logits differ beyond tolerance (a fault, not a near-tie)")
    elif not differences:
        ties = [row.row for row in rows if row.verdict == "tie"]
        tied = f"; rows {ties} part at a near-tie within tolerance" if ties else ""
        lines.append(f"PASS: every step's logits within tolerance{tied}")
    print("\n".join(wrapped for line in lines for wrapped in wrap(line)))
    status = EXIT_DIFFERENT if failed or differences else EXIT_OK
    if args.json:
        data = {"format": REPORT_FORMAT, "kind": "generate", "header": header, "passed": status == EXIT_OK,
                "exit_status": status, "verdict": lines[-1],
                "config_differences": [{"field": f, "reference": a, "candidate": b} for f, a, b in differences],
                "rows": [divergence_json(row) for row in rows]}  # fmt: skip
        _write_json(args.json, data)
    return status


def batch_command(args) -> int:
    _check_args(args)
    if not args.prompt or len(args.prompt) < 2:
        raise ParityError("--prompt: give at least two (a batch to pad), e.g. --prompt 'Hi' --prompt 'What is shown?'")
    folder, model, processor, images = _load(args)
    batch_inputs = build_inputs(processor, images, args.prompt, args.raw_prompt, padding_side="left")
    shares = _prompt_images(processor, images, args.prompt, args.raw_prompt)
    alone_inputs = [
        build_inputs(processor, share, [prompt], args.raw_prompt)
        for share, prompt in zip(shares, args.prompt, strict=True)
    ]
    if args.source == "transformers":
        hf = load_transformers(folder, args.dtype)
        label, precision = _transformers_label(args), DTYPE_NAMES[args.dtype]
        logits = lambda inputs: transformers_logits(hf, inputs)  # noqa: E731
        greedy = lambda inputs: transformers_greedy(hf, inputs, args.max_new_tokens, _pad_id(model))  # noqa: E731
    else:
        label, precision = _minillava_label(model, args), model.dtype.name
        logits = lambda inputs: minillava_logits(model, inputs)  # noqa: E731
        greedy = lambda inputs: minillava_greedy(model, inputs, args.max_new_tokens)  # noqa: E731
    tol = args.logits_tol if args.logits_tol is not None else TOLERANCES[precision][1]
    batch = (batch_inputs, logits(batch_inputs), *greedy(batch_inputs))
    alone = [(one, logits(one), *greedy(one)) for one in alone_inputs]
    rows = batch_rows(batch, alone, tol, model.generation_defaults.eos_token_id)
    B, T = batch_inputs["input_ids"].shape
    header = [
        f"{label}: each row of a left-padded batch of {B} ({T} positions) against the same prompt alone "
        f"(the reference); logits at the real positions and {args.max_new_tokens} greedy tokens at most; "
        f"tolerance {tol:.2g}"
    ]
    lines = [*header, f"{'row':>3}  {'tokens':>6}  {'padding':>7}  {'max abs':>7}  {'rel diff':>8}  greedy tokens"]
    for row in rows:
        greedy_text = row.message or (
            f"the same {row.greedy.steps}" if row.greedy.step is None else f"part at step {row.greedy.step}"
        )
        mark = "FAIL" if row.failed else "ok"
        lines.append(
            f"{row.row:>3}  {row.tokens:>6}  {row.padded:>7}  {fmt(row.max_abs):>7}  {fmt(row.rel):>8}  "
            f"{greedy_text}  {mark}"
        )
    for row in rows:
        if row.greedy is not None and (row.greedy.step is not None or row.greedy.failed):
            lines += format_divergence(row.greedy, processor.decode)
    failed = [row.row for row in rows if row.failed]
    if failed:
        lines.append(f"FAIL: rows {failed} differ from the same prompt alone: the batch changes what a row computes")
    else:
        lines.append(f"PASS: every row of the batch computes what its prompt alone computes (within {tol:.2g})")
    print("\n".join(wrapped for line in lines for wrapped in wrap(line)))
    status = EXIT_DIFFERENT if failed else EXIT_OK
    if args.json:
        data = {"format": REPORT_FORMAT, "kind": "batch", "header": header, "passed": status == EXIT_OK,
                "exit_status": status, "verdict": lines[-1], "rows": [batch_json(row) for row in rows]}  # fmt: skip
        _write_json(args.json, data)
    return status


COMMANDS = {"run": run_command, "dump": dump_command, "compare": compare_command, "generate": generate_command,
            "batch": batch_command}  # fmt: skip


def main(argv=None) -> int:
    """``minillava parity [dump|compare|generate|batch] ...``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parsers = build_parsers()
    name = argv[0] if argv[:1] and argv[0] in SUBCOMMANDS else "run"
    rest = argv[1:] if name != "run" else argv
    try:
        args = parsers[name].parse_args(rest)
    except SystemExit as stop:  # --help, or a bad argument (its one line already printed): the status, returned
        return stop.code
    try:
        return COMMANDS[name](args)
    except ParityError as err:
        print(f"minillava parity: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\nminillava parity: interrupted", file=sys.stderr)
        return 130
