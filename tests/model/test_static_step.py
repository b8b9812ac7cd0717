"""The fixed-shape decode step (minillava.model.static_step, ``load_model(..., cuda_graphs=True)``) against the plain
step it stands for: greedy and sampled generation token for token, each decode step's logits within 1e-5 of the
plain step's scale (it attends over every cache position, the unwritten ones masked: the same softmax with exact
zeros added, summed in another order), with padding, grouped-query heads, tiled attention and quantized weights.

What makes it recordable as a CUDA graph is checked on the CPU with the stand-in device of test_device_guard.py:
inside the step no device value reaches the host, and every decode step runs the same operations on the same
shapes (a recording replays exactly that). The recording itself needs a GPU: `pytest --device cuda` runs the
tests that take the ``device`` fixture there (tools/gpu_check.sh).
"""

import json

import numpy as np
import pytest

import minillava
from minillava.demo import demo_folder
from minillava.model import backend, static_step
from minillava.model.llava import LlavaModel
from minillava.model.static_step import StaticDecodeStep

from . import test_device_guard as guard
from .helpers import make_inputs, rel_err

STEP_TOL = 1e-5  # a decode step's logits against the plain step's: the modules' tolerance (helpers.py)


def with_graphs(model, **options):
    """The same weights with cuda_graphs=True (and any other LlavaModel option)."""
    return LlavaModel(model.config, model.params, dtype=str(model.dtype), generation_defaults=model.generation_defaults,
                      attn_implementation=options.pop("attn_implementation", model.attn_implementation),
                      cuda_graphs=True, **options)  # fmt: skip


@pytest.fixture(scope="module", params=["base", "interleave"], ids=["llava-1.5", "interleave"])
def plain_model(request, tiny_checkpoint):
    return minillava.load_model(tiny_checkpoint(request.param, "fresh", "float32", False))


SETTINGS = [{}, {"do_sample": True, "top_k": 5, "top_p": 0.9, "repetition_penalty": 1.3, "temperature": 0.7, "seed": 3}]


@pytest.mark.parametrize("settings", SETTINGS, ids=["greedy", "sampled"])
def test_generate_equals_the_plain_step(plain_model, settings):
    """A left-padded batch of two rows, one with an image: the padding's keys stay masked in every step."""
    input_ids, attention_mask, pixel_values = make_inputs(plain_model.config, np.random.default_rng(2),
                                                          [[3, "img", 2], [5]])  # fmt: skip
    kwargs = {"pixel_values": pixel_values, "attention_mask": attention_mask, "max_new_tokens": 12, **settings}
    ours = with_graphs(plain_model).generate(input_ids, **kwargs)
    assert np.array_equal(ours, plain_model.generate(input_ids, **kwargs))


def test_each_decode_steps_logits_equal_the_plain_steps(plain_model):
    model = with_graphs(plain_model)
    input_ids, attention_mask, pixel_values = make_inputs(model.config, np.random.default_rng(4), [[2, "img", 4], [3]])
    B, T = input_ids.shape
    features = model.encode_image(pixel_values)
    positions = np.where(attention_mask == 1, np.cumsum(attention_mask, axis=1) - 1, 0)  # [B, T]
    plain_cache, cache = model.new_cache(B, T + 6), model.new_cache(B, T + 6)
    static = StaticDecodeStep(model, cache)
    ref = plain_model.step(input_ids, attention_mask, positions, plain_cache, features)  # [B, V]
    ours = static(input_ids, attention_mask, positions, cache, features)
    assert np.array_equal(ours, ref)  # the prompt: the plain step itself
    errors = []
    for _ in range(6):
        tokens = ref.argmax(axis=-1)[:, None]  # [B, 1]
        attention_mask = np.concatenate([attention_mask, np.ones((B, 1), np.int64)], axis=1)  # [B, Tk]
        positions = positions[:, -1:] + 1  # [B, 1]
        ref = plain_model.step(tokens, attention_mask, positions, plain_cache)  # [B, V]
        ours = static(tokens, attention_mask, positions, cache)
        errors.append(rel_err(ours, ref))
    assert cache.length == plain_cache.length == T + 6
    assert max(errors) <= STEP_TOL, errors


@pytest.mark.parametrize("options", [{"attn_implementation": "tiled"}, {"quantize": "int8"}, {"fused_kernels": True}],
                         ids=["tiled", "int8", "fused"])  # fmt: skip
def test_with_tiled_attention_quantized_weights_or_fused_kernels(tiny_checkpoint, options):
    folder = tiny_checkpoint("base", "fresh", "float32", False)
    plain = minillava.load_model(folder, **options)
    graphs = minillava.load_model(folder, cuda_graphs=True, **options)
    input_ids, attention_mask, pixel_values = make_inputs(plain.config, np.random.default_rng(5), [[4, "img", 3], [2]])
    kwargs = {"pixel_values": pixel_values, "attention_mask": attention_mask, "max_new_tokens": 8}
    assert np.array_equal(graphs.generate(input_ids, **kwargs), plain.generate(input_ids, **kwargs))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("variant", ["base", "interleave"], ids=["llava-1.5", "interleave"])
def test_on_the_device_greedy_tokens_equal_the_plain_step(tiny_checkpoint, device, variant, dtype):
    """On a GPU (`pytest --device cuda`) this records the step as a CUDA graph and replays it, with the plain
    functions and with the fused kernels (test_fused.py checks each kernel against its plain twin)."""
    folder = tiny_checkpoint(variant, "fresh", "float32", False)
    plain = minillava.load_model(folder, device=device, dtype=dtype)
    graphs = minillava.load_model(folder, device=device, dtype=dtype, cuda_graphs=True)
    fused = minillava.load_model(folder, device=device, dtype=dtype, cuda_graphs=True, fused_kernels=True)
    input_ids, attention_mask, pixel_values = make_inputs(plain.config, np.random.default_rng(6), [[3, "img", 2], [6]])
    kwargs = {"pixel_values": pixel_values, "attention_mask": attention_mask, "max_new_tokens": 10}
    expected = plain.generate(input_ids, **kwargs)
    assert np.array_equal(graphs.generate(input_ids, **kwargs), expected)
    assert np.array_equal(fused.generate(input_ids, **kwargs), expected)  # the recording of the fused kernels


def test_the_demo_answers_the_same():
    """The bundled demo's five sample pictures and questions (what the command line asks), through the processor."""
    model, processor = minillava.load_model(), minillava.load_processor()
    graphs = with_graphs(model)
    for sample in sorted((demo_folder() / "samples").glob("*.json")):
        question = json.loads(sample.read_text())["question"]
        prompt = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
            add_generation_prompt=True,
        )
        inputs = processor(images=str(sample.with_suffix(".png")), text=prompt)
        kwargs = {"pixel_values": inputs["pixel_values"], "attention_mask": inputs["attention_mask"]}
        ours = graphs.generate(inputs["input_ids"], max_new_tokens=12, **kwargs)
        assert np.array_equal(ours, model.generate(inputs["input_ids"], max_new_tokens=12, **kwargs)), sample.name


def test_the_record_and_replay_flow_with_a_stand_in_recorder(plain_model, monkeypatch):
    """The CuPy flow, its recording emulated on NumPy: the first decode step runs as it is, the second is recorded
    once, every step from then on is a launch of that recording, and each returns the recording's own logits array
    (a replay writes the same addresses). The tokens are the plain step's."""
    graphs, returned = [], []

    class StandInGraph:
        def __init__(self, fn, logits):
            self.fn, self.logits, self.launches = fn, logits, 0

        def launch(self):
            self.launches += 1
            self.logits[...] = self.fn()  # a replay writes its results into the arrays made when it was recorded

    def record(fn):  # a real recording runs nothing; running the step here writes the same keys and values twice
        graph = StandInGraph(fn, fn().copy())
        graphs.append(graph)
        return graph, graph.logits, "the graph's pool"

    init, call = StaticDecodeStep.__init__, StaticDecodeStep.__call__

    def recordable_init(self, model, cache):
        init(self, model, cache)
        self.recordable = True  # as on CuPy

    def noted_call(self, *args, **kwargs):
        returned.append(call(self, *args, **kwargs))
        return returned[-1]

    monkeypatch.setattr(static_step, "record_cuda_graph", record)
    monkeypatch.setattr(StaticDecodeStep, "__init__", recordable_init)
    monkeypatch.setattr(StaticDecodeStep, "__call__", noted_call)
    input_ids, attention_mask, pixel_values = make_inputs(plain_model.config, np.random.default_rng(8),
                                                          [[3, "img", 2], [5]])  # fmt: skip
    kwargs = {"pixel_values": pixel_values, "attention_mask": attention_mask, "max_new_tokens": 8, "eos_token_id": None}
    ours = with_graphs(plain_model).generate(input_ids, **kwargs)
    assert np.array_equal(ours, plain_model.generate(input_ids, **kwargs))
    (graph,) = graphs  # recorded once, at the second decode step
    assert len(returned) == 8 and graph.launches == 6  # the prompt, 7 decode steps: 1 as it is, 6 launches
    assert all(logits is graph.logits for logits in returned[2:])


# -- what makes the step recordable, on the stand-in device -------------------------------------------------


@pytest.fixture
def guarded_graphs(plain_model):
    guarded = guard.on_guard(plain_model)
    guarded.cuda_graphs = True
    return guarded


def generate_on_guard(model, seed=7):
    input_ids, attention_mask, pixel_values = make_inputs(
        model.config, np.random.default_rng(seed), [[3, "img", 1], [4]]
    )
    return model.generate(input_ids, pixel_values=pixel_values, attention_mask=attention_mask, max_new_tokens=6)


def inside_decode(monkeypatch, on_enter, on_exit):
    """Call on_enter / on_exit around every StaticDecodeStep.decode (the work a GPU records)."""
    decode = StaticDecodeStep.decode

    def wrapped(self):
        on_enter()
        try:
            return decode(self)
        finally:
            on_exit()

    monkeypatch.setattr(StaticDecodeStep, "decode", wrapped)


def test_the_step_brings_no_device_value_to_the_host(guarded_graphs, plain_model, monkeypatch):
    """A recording cannot wait for the GPU: float(x), int(x), bool(x), x.item(), x.tolist() and x.get() (what a
    host read of device data would be) fail inside the step; the same generation as NumPy's comes out."""
    inside = [False]
    inside_decode(monkeypatch, lambda: inside.__setitem__(0, True), lambda: inside.__setitem__(0, False))

    def refused_inside(method, name):
        def checked(self, *args):
            if inside[0]:
                raise AssertionError(f"{name} of a device array inside the recorded step: a host synchronisation")
            return method(self, *args)

        return checked

    for name in ("__float__", "__int__", "__bool__", "get"):
        monkeypatch.setattr(guard.DeviceArray, name, refused_inside(getattr(guard.DeviceArray, name), name))
    getattr_ = guard.DeviceArray.__getattr__
    monkeypatch.setattr(guard.DeviceArray, "__getattr__", lambda self, name: (
        refused_inside(lambda s: getattr_(s, name), name)(self) if name in ("item", "tolist") else getattr_(self, name)
    ))  # fmt: skip
    assert np.array_equal(generate_on_guard(guarded_graphs), generate_on_guard(plain_model))


def test_every_decode_step_runs_the_same_operations_on_the_same_shapes(guarded_graphs, monkeypatch):
    """What a recording replays: each decode step's sequence of device operations, with the shapes of their
    arrays, is one and the same at every position (no shape grows with the cache, no branch on the position)."""
    steps, current = [], [None]
    inside_decode(monkeypatch, lambda: current.__setitem__(0, []), lambda: steps.append(current[0]))
    call = guard.OnDevice.__call__

    def recorded(self, *args, **kwargs):
        if current[0] is not None:
            shapes = [tuple(a.shape) for a in (*args, *kwargs.values()) if isinstance(a, guard.DeviceArray)]
            current[0].append((self.name, shapes))
        return call(self, *args, **kwargs)

    monkeypatch.setattr(guard.OnDevice, "__call__", recorded)
    generate_on_guard(guarded_graphs)
    assert len(steps) == 5  # 6 new tokens: the prompt's step and 5 decode steps
    assert len(steps[0]) > 50  # the operations were seen
    assert all(step == steps[0] for step in steps[1:])


def test_the_plain_step_is_not_fixed_shape(plain_model, monkeypatch):
    """The check above can fail: the plain decode step's shapes grow with the cache."""
    guarded = guard.on_guard(plain_model)
    shapes = []
    update = minillava.model.kv_cache.KVCache.update

    def recorded(self, layer, k, v):
        keys, values = update(self, layer, k, v)
        if layer == 0 and k.shape[2] == 1:
            shapes.append(tuple(keys.shape))
        return keys, values

    monkeypatch.setattr(minillava.model.kv_cache.KVCache, "update", recorded)
    generate_on_guard(guarded)
    assert len(set(shapes)) == len(shapes) == 5


# -- bad input --------------------------------------------------------------------------------------------------


def test_cuda_graphs_must_be_a_bool(tiny_checkpoint, plain_model):
    folder = tiny_checkpoint("base", "fresh", "float32", False)
    with pytest.raises(ValueError, match=r"cuda_graphs must be True or False, got 'yes'"):
        minillava.load_model(folder, cuda_graphs="yes")
    with pytest.raises(ValueError, match=r"cuda_graphs must be True or False, got 1"):
        LlavaModel(plain_model.config, plain_model.params, cuda_graphs=1)


def test_a_step_made_for_another_cache_is_refused(plain_model):
    static = StaticDecodeStep(plain_model, plain_model.new_cache(1, 8))
    ids = np.array([[1, 5]])
    with pytest.raises(ValueError, match="made for another cache"):
        static(ids, np.ones_like(ids), np.array([[0, 1]]), plain_model.new_cache(1, 8))


def test_a_decode_step_of_two_tokens_is_refused(plain_model):
    cache = plain_model.new_cache(1, 8)
    static = StaticDecodeStep(plain_model, cache)
    static(np.array([[1, 5]]), np.ones((1, 2), np.int64), np.array([[0, 1]]), cache)
    with pytest.raises(ValueError, match="one new token per row, got 2"):
        static(np.array([[6, 7]]), np.ones((1, 4), np.int64), np.array([[2, 3]]), cache)
    assert backend.to_numpy(static.slot).tolist() == [0]  # refused before any buffer was touched
