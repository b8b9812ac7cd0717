"""A decode step with every shape fixed, so that a GPU can record it once as a CUDA graph and replay it.

Why: on a GPU, each NumPy-style operation of the plain decode step is one kernel launch, and each costs the CPU
microseconds of Python and driver work. A token of llava-1.5-7b takes ~1,700 of them (~52 per layer, counted on
the tests' stand-in device), while the GPU needs ~3 ms to read the 13.5 GB of weights at batch 1 (4.8 TB/s on an
H200): at a few microseconds a launch, the GPU waits on Python. A CUDA graph records
the launches of one step (CuPy's stream capture) and replays them all with one call. This option is
``load_model(..., cuda_graphs=True)``; the plain step (``LlavaModel.step``) stays the default and the reference.

A recording is replayed as it was recorded: the same kernels, on the same shapes, at the same addresses. So the
step that is recorded must do the same work at every position:

- **fixed shapes**: it attends over all ``max_len`` positions of the cache, the ones not written yet masked out
  (the plain step attends over the ``length + 1`` filled ones, a shape that grows every step);
- **inputs in device buffers made once**: the token ids, their positions, which cached positions hold a real
  token (``key_mask``) and where this step writes its keys and values (``slot``) are arrays that the host fills
  before each replay; the step reads them as arrays, never as Python numbers;
- **no host synchronisation inside**: nothing in the step brings a device value to the host (no ``int(x)``, no
  ``if`` on device data). Generation's loop (generate.py) reads the logits after the step, outside the recording;
- **its own memory**: what the step allocates while it is recorded comes from a memory pool that belongs to the
  graph and lives as long as it, so a replay allocates nothing and no one else is given those addresses (PyTorch's
  ``torch.cuda.graph`` keeps a private pool for the same reason).

The prompt's prefill, whose length varies, runs the plain step into the same cache. On NumPy (the CPU) there is
nothing to record: the same fixed-shape step runs each time, which is how the CPU tests check it against the
plain one (tests/model/test_static_step.py).

Shape letters: B = batch, S = max_len (the cache's positions), V = vocab, T = prompt length.
"""

from __future__ import annotations

from .backend import is_cupy
from .kv_cache import KVCache


class SlotCache:
    """The KV cache as the recorded step sees it: its buffers, written at a position held in a device array.

    ``length`` is that array (``slot``, [1]): ``language_model`` takes the cache's length as the position of its
    first query, and here it must be a device value, not a host number baked into the recording.
    """

    def __init__(self, cache: KVCache, slot):
        self.cache = cache
        self.length = slot  # [1] int64, on the device: where this step's keys and values go

    def update(self, layer, k, v):
        """Write k, v [B, KV, 1, hd] at position ``slot`` of ``layer``; return all S positions [B, KV, S, hd].

        An index array, not a slice: ``keys[:, :, slot]`` with ``slot`` on the device is a scatter kernel that
        reads the position on the device (a slice ``start:end`` would need it as a host number).
        """
        self.cache.keys[layer][:, :, self.length] = k  # [B, KV, 1, hd] into [B, KV, S, hd]
        self.cache.values[layer][:, :, self.length] = v
        return self.cache.keys[layer], self.cache.values[layer]  # [B, KV, S, hd]: unwritten positions are masked

    def advance(self, n_new):
        """Nothing here: the host moves the real cache on after the step (``StaticDecodeStep.__call__``)."""


class StaticDecodeStep:
    """``LlavaModel.step`` for one generation, its decode steps on fixed shapes (recorded as a CUDA graph on CuPy).

    Called as generation's loop calls a step function: ``step(ids [B, T], attention_mask [B, Tk], position_ids
    [B, T], cache, image_features=None) -> logits of each row's last position [B, V]``, with the ``cache`` it was
    made for. The first call (the prompt) runs the plain step; each later one (one new token per row) copies its
    inputs into the buffers and runs the fixed-shape step: on CuPy, the first such step runs as it is (CuPy
    compiles its kernels then), the second is recorded, and every step from then on replays the recording.
    """

    def __init__(self, model, cache: KVCache):
        xp = model.xp
        B, S = cache.batch, cache.max_len
        self.model, self.cache, self.xp = model, cache, xp
        self.input_ids = xp.zeros((B, 1), dtype=xp.int64)  # [B, 1] the token each row feeds in
        self.position_ids = xp.zeros((B, 1), dtype=xp.int64)  # [B, 1] its rotary position
        self.key_mask = xp.zeros((B, S), dtype=xp.int64)  # [B, S] 1 where a cached position holds a real token
        self.slot = xp.zeros((1,), dtype=xp.int64)  # [1] the cache position this step writes
        self.slot_cache = SlotCache(cache, self.slot)
        self.recordable = is_cupy(xp)  # NumPy or the tests' stand-in: nothing to record
        self.decode_steps = 0
        self.graph = None  # the recording (cupy.cuda.Graph), once made
        self.graph_logits = None  # [B, V] the array the recording writes its logits into
        self.graph_memory = None  # the recording's own memory pool, kept as long as the graph

    def __call__(self, input_ids, attention_mask, position_ids, cache, image_features=None):
        if cache is not self.cache:
            raise ValueError("this StaticDecodeStep was made for another cache: make one per generation")
        xp, start = self.xp, cache.length
        if start == 0:  # the prompt: the plain step (its length varies), then the buffers learn what it wrote
            logits = self.model.step(input_ids, attention_mask, position_ids, cache, image_features)  # [B, V]
            self.key_mask[:, : cache.length] = xp.asarray(attention_mask)  # [B, T]
            return logits
        if input_ids.shape[1] != 1 or image_features is not None:
            raise ValueError(f"a static decode step takes one new token per row, got {input_ids.shape[1]}")
        # What changes from one step to the next, copied into the buffers (outside the recording).
        self.input_ids[...] = xp.asarray(input_ids)  # [B, 1]
        self.position_ids[...] = xp.asarray(position_ids)  # [B, 1]
        self.key_mask[:, start] = xp.asarray(attention_mask[:, -1])  # [B] the new position: a real token or not
        self.slot[...] = start
        logits = self.replay() if self.recordable else self.decode()  # [B, V]
        cache.advance(1)  # the host's count of the filled positions (the step itself wrote at ``slot``)
        self.decode_steps += 1
        return logits

    def decode(self):
        """The step itself: the language model on the buffers, every shape fixed.  -> logits [B, V]

        ``LlavaModel._logits`` as the plain step calls it, with the buffers for its inputs: ``key_mask`` [B, S] as
        the attention mask (the causal mask built from it also hides positions after ``slot``, which hold nothing
        yet) and ``SlotCache`` for the cache.
        """
        logits = self.model._logits(
            self.input_ids, self.key_mask, self.position_ids, self.slot_cache, last_only=True
        )  # [B, 1, V]
        return logits[:, -1]  # [B, V]

    def replay(self):
        """CuPy: run the first decode step as it is, record the second, replay the recording from then on."""
        if self.graph is None:
            if self.decode_steps == 0:  # compiles CuPy's kernels and sets up cuBLAS: work a recording must not hold
                return self.decode()
            self.graph, self.graph_logits, self.graph_memory = record_cuda_graph(self.decode)
        self.graph.launch()  # on the current stream, after the copies into the buffers above
        return self.graph_logits


def record_cuda_graph(fn):
    """Record ``fn()``'s GPU work as a CUDA graph, without running it.  -> (graph, fn's result, the graph's pool)

    The recording happens on a stream of its own (CUDA cannot record the default stream), with every allocation
    from a memory pool of its own: arrays the step makes and drops are given back to that pool only, so the
    addresses the graph writes at replay are never another array's. Keep the pool as long as the graph.
    """
    import cupy

    pool = cupy.cuda.MemoryPool()
    stream = cupy.cuda.Stream(non_blocking=True)
    with cupy.cuda.using_allocator(pool.malloc), stream:
        stream.begin_capture()
        try:
            result = fn()
        finally:
            graph = stream.end_capture()  # ends the capture even when fn failed, so the stream is usable again
    return graph, result, pool
