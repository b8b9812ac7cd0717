"""The parity tool: run two implementations side by side and find the first module that goes wrong.

    minillava parity --model PATH --image cat.jpg --prompt "What is shown?"      # minillava vs Transformers
    minillava parity dump --model PATH --image cat.jpg --prompt "..." --out ours.npz
    minillava parity compare reference.npz candidate.npz                         # e.g. minillava vs your port

Both sides record the output of every module (``model.forward(..., trace=...)`` here, forward hooks
on ``LlavaForConditionalGeneration`` there) for the same inputs. The report lists them in data-flow
order with their shape, the largest absolute difference, the relative difference (largest absolute
difference / largest magnitude of the reference) and pass/fail against a per-module tolerance, and
points at the first module that fails: the modules after it fail too, because they are fed its error.
Sequence outputs ([B, T, ...]) are compared at real positions only (attention_mask 1): what a model
computes for a padding position is arbitrary.

Exit status: 0 every entry within tolerance, 1 one is not (or is missing, or has another shape),
2 nothing could be compared (bad arguments, unreadable files, Transformers not installed).

Transformers and torch are optional: they are imported inside the function that needs them.

The parts: ``compare`` (two traces -> a report of rows), ``hooks`` (the two sides: minillava's trace,
Transformers with forward hooks), ``report`` (the table and the plot), ``npz`` (traces in files, the
format a port writes) and ``command`` (``minillava parity``). The names of the entries, in data-flow
order, are the model's own list (``minillava.model.trace.activation_names``).
"""

from .command import build_inputs, main
from .compare import DTYPE_NAMES, INPUT_NAMES, TOLERANCES, ParityError, Report, Row, compare_traces, tolerance_for
from .hooks import import_transformers, load_transformers, minillava_trace, transformers_trace
from .npz import FORMAT, config_differences, load_trace, save_trace
from .report import HINTS, format_report, plot_report

__all__ = [
    "DTYPE_NAMES", "FORMAT", "HINTS", "INPUT_NAMES", "TOLERANCES", "ParityError", "Report", "Row", "build_inputs",
    "compare_traces", "config_differences", "format_report", "import_transformers", "load_transformers", "load_trace",
    "main", "minillava_trace", "plot_report", "save_trace", "tolerance_for", "transformers_trace",
]  # fmt: skip
