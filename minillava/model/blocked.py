"""Multiplying by weights kept at rest (float16 memory-mapped, or quantized), a block of rows at a time.

The plain path, ``layers.linear``, turns the whole weight into the compute dtype and then multiplies. For one
token (a decode step) that is a poor trade: llava-1.5-7b's float16 weights become 26 GB of fresh float32 every
token, written to memory once and read once, and fresh memory costs the operating system a page fault per
4 kB. This path casts (or dequantizes) ``block_rows`` rows at a time, multiplies them at once while they are
still in the processor's cache, and lets the next block reuse the same memory:

    y = x Wᵀ                       the whole weight cast first      [N, F]   (layers.linear, the reference)
    y[:, r0:r1] = x W[r0:r1]ᵀ      each block cast, then multiplied  [N, r1 - r0]   (here)

The blocks are independent, so ``threads`` workers share them, worker i taking blocks i, i + n, i + 2n, ...
(one hand-off per worker and product, not one per block: a 7B decode step has some 25,000 blocks): NumPy's
casts and BLAS release Python's lock, and the cores work at once. For int8 the row's one scale goes on the
output instead of on the weight: x (q s)ᵀ = (x qᵀ) s, one multiplication per output instead of one per
weight. The numbers equal the plain path's to float32 rounding (the same products, summed in blocks). Only
a few rows of ``x`` are worth it: with many (a prefill), the one large matrix product of the plain path keeps
BLAS busier than any blocking here, so ``layers.linear`` keeps those (``MAX_ROWS_OF_X``).

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

# Values cast at once: 64 rows of 4096 (1 MiB of float32) stay in every core's cache, and a product of this size
# OpenBLAS computes on the calling thread; it splits larger ones over threads of its own, which then fight the
# workers here (measured: down_proj's 11008-wide rows in blocks of 64, 2.5x slower than in blocks of 23).
BLOCK_VALUES = 64 * 4096
MAX_ROWS_OF_X = 16  # more rows than this (a prefill) go to the plain path's one large product


@dataclass(frozen=True, eq=False)
class BlockedWeight:
    """A weight at rest, to be multiplied in blocks of rows by ``linear_blocked``.

    weight: the weight as it rests, a float array [F, D] (float16, memory-mapped) or a QuantizedWeight;
    block_rows: rows cast at once (None: BLOCK_VALUES // D); pool: the threads that share the blocks, a
    ``thread_pool`` (None: this thread alone)."""

    weight: Any
    block_rows: int | None = None
    pool: BlockPool | None = None

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
    rows = blocked.block_rows or max(1, BLOCK_VALUES // D)
    starts = range(0, F, rows)  # the first row of each block

    def blocks(share):
        for r0 in share:
            r1 = min(r0 + rows, F)
            y[:, r0:r1] = x2 @ rows_as(weight, r0, r1, x.dtype).T  # [N, R]
            if int8:
                y[:, r0:r1] *= weight.scales[r0:r1, 0].astype(x.dtype)  # [R]: the row scales, on the output

    if blocked.pool is None:
        blocks(starts)
    else:
        n = blocked.pool.threads
        list(blocked.pool.map(blocks, [starts[i::n] for i in range(n)]))  # worker i: blocks i, i + n, ...
    if bias is not None:
        y += bias.astype(x.dtype, copy=False)  # [F]
    return y.reshape(*x.shape[:-1], F)  # [N..., F]


class BlockPool(ThreadPoolExecutor):
    """The threads that share a product's blocks, and how many they are."""

    def __init__(self, threads: int):
        super().__init__(threads, thread_name_prefix="minillava-blocks")
        self.threads = threads


def thread_pool(threads: int | None) -> BlockPool | None:
    """The workers of a model's blocked products: ``threads`` of them (None: one per CPU), or None for one."""
    threads = os.cpu_count() if threads is None else threads
    return BlockPool(threads) if threads > 1 else None
