"""How to hold a checkpoint's weights, chosen before any of them is read.

    float32 in RAM          when the weights in the compute dtype fit in the memory available now
    the file's dtype, at rest, memory-mapped, cast where each weight is used
                            when they do not, but the file's bytes fit in the machine's memory
    a clear error           when even that cannot fit: the process would be killed, or page weights in
                            from disk for every token

The sizes come from the config (every tensor's shape) and the safetensors headers (each tensor's dtype
in the file); the memory from the operating system (Linux: /proc/meminfo's MemAvailable and MemTotal,
elsewhere the physical pages os.sysconf reports), or from the caller's ``memory_budget``. A reserve is
kept for what is not weights: the activations and KV cache of an image prompt, Python and the libraries.
With ``quantize``, the language model's linear weights count their quantized size (integers and scales) in both.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..model.quantize import quantized_nbytes
from .weights import is_quantized

GiB = 2**30
RESERVE = GiB  # activations and KV cache of a ~600-token image prompt at 7B sizes, Python, NumPy, the tokenizer
ANNOUNCE_FROM = GiB  # checkpoints smaller than this load silently (the demo, the tests' tiny ones)
BYTES_AT_REST = {"F32": 4, "F16": 2, "BF16": 4, "F64": 8}  # bytes per value once loaded: bfloat16 is decoded to float32


@dataclass(frozen=True)
class MemoryPlan:
    """The choice (``low_memory``: keep the file's dtype, memory-mapped) and the one line that says why."""

    low_memory: bool
    message: str
    announce: bool  # the line is worth printing (a large checkpoint)


def memory_info() -> tuple[int | None, int | None]:
    """(bytes available now without swapping, bytes of physical memory), None where the system does not say."""
    try:
        fields = dict(re.findall(r"^(\w+):\s+(\d+) kB", Path("/proc/meminfo").read_text(), flags=re.M))
        return int(fields["MemAvailable"]) * 1024, int(fields["MemTotal"]) * 1024
    except (OSError, KeyError, ValueError):
        pass
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total = os.sysconf("SC_PHYS_PAGES") * page
        available = os.sysconf("SC_AVPHYS_PAGES") * page if "SC_AVPHYS_PAGES" in os.sysconf_names else None
        return available, total
    except (ValueError, OSError, AttributeError):
        return None, None


def parse_budget(value) -> int:
    """A memory budget: a number of bytes, or a string such as "12GB", "12 GiB", "800MB"."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return int(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?)(i?)B?\s*", value, flags=re.I)
        if m and float(m[1]) > 0:
            base = 1024 if m[3] else 1000
            return int(float(m[1]) * base ** "_KMGT".index(m[2].upper() or "_"))
    raise ValueError(f"memory_budget must be a positive number of bytes or a size such as '12GB', got {value!r}")


def weight_bytes(shapes: dict, file_dtypes: dict, compute_dtype: str, quantize: str | None = None) -> tuple[int, int]:
    """(bytes of the weights in the compute dtype, bytes of the weights as held at rest from the files).

    shapes: every tensor's shape (weights.expected_shapes); file_dtypes: each tensor's safetensors dtype (a tied
    lm_head that the file leaves out is the embedding matrix itself: it costs nothing more). quantize: None or a
    format of model/quantize.py: the weights it applies to (weights.is_quantized) count their quantized bytes,
    integers and scales, either way."""
    itemsize = np.dtype(compute_dtype).itemsize
    in_ram = at_rest = 0
    for key, shape in shapes.items():
        if key not in file_dtypes:  # tied: the same array as another tensor
            continue
        if quantize is not None and is_quantized(key):
            in_ram += quantized_nbytes(shape, quantize)
            at_rest += quantized_nbytes(shape, quantize)
            continue
        n = int(np.prod(shape))
        in_ram += n * itemsize
        at_rest += n * BYTES_AT_REST.get(file_dtypes[key], itemsize)
    return in_ram, at_rest


def plan_memory(in_ram: int, at_rest: int, low_memory: bool | None, budget=None, quantize=None) -> MemoryPlan:
    """Choose how to hold the weights (see the module's docstring); raise MemoryError when nothing fits.

    low_memory: True or False is the caller's own choice (then only checked against the machine's memory);
    None chooses. budget: the memory to plan with (bytes or "12GB") instead of what the system reports.
    quantize: the format the sizes count the language model's linear weights in (``weight_bytes``), or None;
    the messages say so."""
    available, total = memory_info()
    if budget is not None:
        available = total = parse_budget(budget)
    where = "the memory budget" if budget is not None else "this machine"
    announce = in_ram >= ANNOUNCE_FROM

    def gib(n):
        return f"{n / GiB:.1f} GiB"

    quantized = "" if quantize is None else f" with the language model's linear weights in {quantize}"
    if total is not None and at_rest + RESERVE > total:
        advice = {
            None: ", or quantized (quantize='int8' or 'int4' keeps the language model's weights in 1 or 1/2 byte each)",
            "int8": ", or with quantize='int4' or 'nf4' (half a byte per weight)",
        }.get(quantize, "")
        raise MemoryError(
            f"the weights need {gib(at_rest)} even kept in the file's dtype{quantized} (plus {gib(RESERVE)} to run), "
            f"and {where} has {gib(total)}: load it on a machine with more memory{advice}"
        )
    if low_memory is None:
        fits = available is None or in_ram + RESERVE <= available
        low_memory = not fits
        if fits:
            message = f"weights in RAM in the compute dtype{quantized}: {gib(in_ram)}" + (
                f", {gib(available)} available" if available is not None else ""
            )
        else:
            message = (
                f"weights kept in the file's dtype{quantized}, memory-mapped ({gib(at_rest)}; cast where used): "
                f"{gib(in_ram)} in the compute dtype would not fit in the {gib(available)} available"
            )
        return MemoryPlan(low_memory, message, announce or low_memory)
    if not low_memory and available is not None and in_ram + RESERVE > available:
        raise MemoryError(
            f"low_memory=False asks for the weights in RAM in the compute dtype, {gib(in_ram)} (plus {gib(RESERVE)} "
            f"to run), but {where} has {gib(available)} available: pass low_memory=True (or leave it to minillava) "
            f"to keep them in the file's dtype, {gib(at_rest)}"
        )
    chosen = f"weights kept in the file's dtype{quantized}, memory-mapped ({gib(at_rest)})" if low_memory else (
        f"weights in RAM in the compute dtype{quantized} ({gib(in_ram)})"
    )  # fmt: skip
    return MemoryPlan(low_memory, chosen + " (asked for)", announce)
