"""The parity tool: run two implementations side by side and find the module that goes wrong.

    minillava parity --model PATH --image cat.jpg --prompt "What is shown?"      # minillava vs Transformers
    minillava parity dump --model PATH --image cat.jpg --prompt "..." --out ours.npz
    minillava parity compare reference.npz candidate.npz --model PATH            # e.g. minillava vs your port
    minillava parity generate --model PATH --image cat.jpg --prompt "..."        # where greedy tokens first part
    minillava parity batch --model PATH --image a.jpg --image b.jpg --prompt "..." --prompt "..."

Both sides record the output of every module (``model.forward(..., trace=...)`` here, forward hooks
on ``LlavaForConditionalGeneration`` there) for the same inputs. The report starts with the config
fields the two sides resolve differently, then lists the inputs and every module in data-flow order
with the largest absolute difference, the relative difference (largest absolute difference / largest
magnitude of the reference), the cosine similarity and the NMSE in dB, and pass/fail against a
per-module tolerance. Besides that end-to-end difference, each module is recomputed by minillava from
one side's own input to it (its *isolated* difference): a module out of tolerance alone is wrong, and
the first such is the *culprit*; a row out of tolerance end to end but not alone only inherits the
drift of the modules before it. Sequence outputs ([B, T, ...]) are compared at real positions only
(attention_mask 1): what a model computes for a padding position is arbitrary.

Exit status: 0 every entry within tolerance, 1 one is not (or is missing, or has another shape),
2 nothing could be compared (bad arguments, unreadable files, Transformers not installed).

Transformers and torch are optional: they are imported inside the function that needs them.

The parts: ``compare`` (two traces -> a report of rows, the measures), ``isolated`` (each module
recomputed from one side's inputs: the one table of what each entry is computed from), ``hooks`` (the
two sides: minillava's trace, Transformers with forward hooks; both sides' logits and greedy steps),
``report`` (the table, the JSON and the plot), ``npz`` (traces in files, the format a port writes, the
config diff), ``generation`` (where greedy generations part; batch invariance) and ``command``
(``minillava parity``). The names of the entries, in data-flow order, are the model's own list
(``minillava.model.trace.activation_names``).
"""

from .command import build_inputs, main
from .compare import (
    DTYPE_NAMES,
    INPUT_NAMES,
    ISOLATED_TOLERANCES,
    TOLERANCES,
    Isolated,
    ParityError,
    Report,
    Row,
    compare_traces,
    measure,
    tolerance_for,
)
from .generation import BatchRow, Divergence, batch_rows, compare_generations, format_divergence
from .hooks import (
    import_transformers,
    load_transformers,
    minillava_greedy,
    minillava_logits,
    minillava_trace,
    transformers_greedy,
    transformers_logits,
    transformers_trace,
)
from .isolated import RECIPES, isolated_differences
from .npz import FORMAT, config_differences, load_trace, resolved_fields, save_trace
from .report import HINTS, format_report, plot_report, report_json, verdict

__all__ = [
    "DTYPE_NAMES", "FORMAT", "HINTS", "INPUT_NAMES", "ISOLATED_TOLERANCES", "RECIPES", "TOLERANCES", "BatchRow",
    "Divergence", "Isolated", "ParityError", "Report", "Row", "batch_rows", "build_inputs", "compare_generations",
    "compare_traces", "config_differences", "format_divergence", "format_report", "import_transformers",
    "isolated_differences", "load_trace", "load_transformers", "main", "measure", "minillava_greedy",
    "minillava_logits", "minillava_trace", "plot_report", "report_json", "resolved_fields", "save_trace",
    "tolerance_for", "transformers_greedy", "transformers_logits", "transformers_trace", "verdict",
]  # fmt: skip
