"""The key/value cache: what a decoder has already computed for earlier positions.

Generating token t+1 needs the keys and values of positions 0..t in every layer. They do not change
once computed (causal attention: a position never looks ahead), so each layer stores them in a
buffer preallocated for the whole generation, and a decode step computes K and V for its one new
position only, writes them after the cached ones and attends over the filled part.

Memory: 2 (K and V) x layers x B x KV x max_len x hd x bytes; for llava-1.5-7b in float32 at 4096
positions that is 2 x 32 x 32 x 4096 x 128 x 4 bytes = 4 GiB per sequence (2 GiB in float16).

Shape letters: B = batch, KV = key/value heads, S = max_len, T = new positions, hd = head_dim.
"""

from __future__ import annotations


class KVCache:
    """Per-layer K and V buffers [B, KV, S, hd], and how many positions are filled (``length``)."""

    def __init__(self, xp, n_layers, batch, n_kv_heads, max_len, head_dim, dtype):
        self.keys = [xp.zeros((batch, n_kv_heads, max_len, head_dim), dtype=dtype) for _ in range(n_layers)]
        self.values = [xp.zeros((batch, n_kv_heads, max_len, head_dim), dtype=dtype) for _ in range(n_layers)]
        self.length = 0  # positions 0 .. length-1 hold valid K and V

    @property
    def max_len(self) -> int:
        return self.keys[0].shape[2]

    @property
    def batch(self) -> int:
        return self.keys[0].shape[0]

    def update(self, layer, k, v):
        """Write this step's k, v [B, KV, T, hd] at positions length .. length+T-1 of ``layer`` and
        return all keys and values so far, [B, KV, length + T, hd] (views, no copy).

        ``length`` itself moves on only when the whole step is done (``advance``), since every
        layer writes at the same positions.
        """
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache is full: {end} positions needed, max_len is {self.max_len}")
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, n_new):
        self.length += n_new
