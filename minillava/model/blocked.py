"""Multiplying by weights kept at rest (float16 memory-mapped, or quantized), a block of rows at a time.

The plain path, ``layers.linear``, turns the whole weight into the compute dtype and then multiplies. For one
token (a decode step) that is a poor trade: llava-1.5-7b's float16 weights become 26 GB of fresh float32 every
token, written to memory once and read once, and fresh memory costs the operating system a page fault per
4 kB. This path casts (or dequantizes) ``block_rows`` rows at a time, multiplies them at once while they are
still in the processor's cache, and lets the next block reuse the same memory:

    y = x Wᵀ                       the whole weight cast first      [N, F]   (layers.linear, the reference)
    y[:, r0:r1] = x W[r0:r1]ᵀ      each block cast, then multiplied  [N, r1 - r0]   (here)

The blocks are independent, so ``threads`` workers take them in turn: NumPy's casts and BLAS release Python's
lock, and the cores work at once. For int8 the row's one scale goes on the output instead of on the weight:
x (q s)ᵀ = (x qᵀ) s, one multiplication per output instead of one per weight. The numbers equal the plain
path's to float32 rounding (the same products, summed in blocks). Only a few rows of ``x`` are worth it: with
many (a prefill), the one large matrix product of the plain path keeps BLAS busier than any blocking here,
so ``layers.linear`` keeps those (``MAX_ROWS_OF_X``).

Chosen with ``load_model(..., blocked_matmul=True)``, which wraps the weights it keeps at rest in a
``BlockedWeight`` (weights already in the compute dtype are left as they are: there is nothing to cast).

Shape letters: N = rows of x (batch × new positions), D = input features, F = output features (weight rows).
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .backend import xp_of
from .quantize import QuantizedWeight, dequantize

BLOCK_ROWS = 64  # rows cast at once: 64 x 4096 float32 is 1 MiB, in every core's cache (measured here: 32-1024)
MAX_ROWS_OF_X = 16  # more rows than this (a prefill) go to the plain path's one large product


@dataclass(frozen=True, eq=False)
class BlockedWeight:
    """A weight at rest, to be multiplied in blocks of rows by ``linear_blocked``.

    weight: the weight as it rests, a float array [F, D] (float16, memory-mapped) or a QuantizedWeight;
    block_rows: rows cast at once; pool: the threads that take the blocks (None: this thread alone)."""

    weight: Any
    block_rows: int = BLOCK_ROWS
    pool: ThreadPoolExecutor | None = None

    @property
    def shape(self):
        return self.weight.shape


def rows_as(weight, r0: int, r1: int, dtype):
    """Rows r0:r1 of a weight at rest, in ``dtype``; for int8, the integers alone (the scales go on the output).
    -> [r1 - r0, D]"""
    if not isinstance(weight, QuantizedWeight):
        return weight[r0:r1].astype(dtype)  # [R, D]  the cast of the rows alone
    if weight.format == "int8":
        return weight.data[r0:r1].astype(dtype)  # [R, D]  integers; x qᵀ times the scales comes after
    data, scales = weight.data[r0:r1], weight.scales[r0:r1]  # [R, Dg/2], [R, n]
    rows = dataclasses.replace(weight, data=data, scales=scales, shape=(r1 - r0, weight.shape[1]))
    return dequantize(rows, dtype)  # [R, D]  the rows are independent: a slice is a quantized weight too


def linear_blocked(x, blocked: BlockedWeight, bias=None):
    """``layers.linear`` for a weight at rest: ``y = x Wᵀ + b``, W cast a block of rows at a time.

    x: [N..., D], blocked: a BlockedWeight of a weight [F, D], bias: [F] or None  ->  [N..., F]
    """
    weight = blocked.weight
    F, D = weight.shape
    x2 = x.reshape(-1, D)  # [N, D]
    xp = xp_of(x)
    y = xp.empty((x2.shape[0], F), dtype=x.dtype)  # [N, F]
    int8 = isinstance(weight, QuantizedWeight) and weight.format == "int8"

    def block(r0):
        r1 = min(r0 + blocked.block_rows, F)
        y[:, r0:r1] = x2 @ rows_as(weight, r0, r1, x.dtype).T  # [N, R]
        if int8:
            y[:, r0:r1] *= weight.scales[r0:r1, 0].astype(x.dtype)  # [R]: the row scales, on the output

    starts = range(0, F, blocked.block_rows)
    if blocked.pool is None:
        for r0 in starts:
            block(r0)
    else:
        list(blocked.pool.map(block, starts))  # every block written once, each by one thread
    if bias is not None:
        y += bias.astype(x.dtype, copy=False)  # [F]
    return y.reshape(*x.shape[:-1], F)  # [N..., F]


def thread_pool(threads: int | None):
    """The workers of a model's blocked products: ``threads`` of them (None: one per CPU), or None for one."""
    threads = os.cpu_count() if threads is None else threads
    return ThreadPoolExecutor(threads, thread_name_prefix="minillava-blocks") if threads > 1 else None
