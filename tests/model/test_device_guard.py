"""A guard on the CPU for the GPU path: the whole model runs on a stand-in "device" that fails where CuPy would.

Model code asks ``xp = backend.xp_of(x)`` for the namespace of its input, so that it runs on NumPy and CuPy alike;
CI has no GPU, so nothing would notice a NumPy-only call or a silent trip to the host that breaks on CuPy. Here
the parameters are moved onto ``GUARD``, a namespace whose arrays (``DeviceArray``) hold NumPy arrays inside but
behave as CuPy's do towards the host:

- ``np.asarray(device_array)`` (and any other implicit conversion to NumPy) raises TypeError, as CuPy's does;
- a NumPy function called on a device array (``np.where(x, ...)`` in model code) raises TypeError naming it:
  model code must call ``xp.where``. (CuPy would run the functions it has; the house rule is stricter, and it
  is the only way to catch the ones CuPy lacks without CuPy at hand.)
- a host array mixed with device arrays (an operator, an ``xp.`` function, an index, an assigned value) raises
  TypeError, as CuPy's operators and functions do (CuPy copies a host index over silently; the guard refuses that
  too): host arrays enter only through ``xp.asarray`` and leave only through ``backend.to_numpy``;
- ``xp.<name>`` for a name outside ``CUPY_NAMES`` raises AttributeError, as ``cupy.<name>`` would.

Scalars leave a device array as they do on CuPy: ``float(x)``, ``int(x)``, ``bool(x)``, ``x.item()``, ``x.tolist()``
work (each one a device-to-host copy, which CuPy allows: the model's edges use them, e.g. ``loss`` returns a float);
``operator.index(x)`` fails, as CuPy leaves ``__index__`` out on purpose. Results must equal the NumPy path's bit
for bit: the stand-in computes with NumPy, the same calls in the same order. Not covered: ``blocked_matmul``, which
is CPU-only (load_model refuses it with device="cuda").
"""

import numpy as np
import pytest

import minillava
from minillava.loading.checkpoint import _map_arrays
from minillava.model import backend, training
from minillava.model.llava import LlavaModel
from minillava.model.rope import inverse_frequencies

from .helpers import make_inputs
from .test_training import make_labels

# Every name model code may take from its namespace, each one in CuPy's API reference (cupy.finfo and
# cupy.promote_types are NumPy's own, re-exported). A name missing here is a NumPy-only call, or one to add after
# checking that CuPy has it. (Methods of ufuncs are not checked: xp.add.at, the embedding's backward, is CuPy's
# ufunc.at, CuPy 13 and later.)
CUPY_NAMES = {
    "abs", "add", "arange", "argsort", "ascontiguousarray", "asarray", "broadcast_to", "clip", "concatenate", "cos",
    "cumsum", "divide", "empty", "exp", "finfo", "float16", "float32", "float64", "full", "full_like", "inf",
    "int8", "int32", "int64", "isfinite", "log", "max", "maximum", "pad", "promote_types", "repeat", "rint", "sin",
    "sort", "sqrt", "stack", "subtract", "sum", "tanh", "uint8", "where", "zeros", "zeros_like",
}  # fmt: skip


def to_host_refused(what):
    return TypeError(f"{what}: a host (NumPy) array mixed with device arrays; bring it over with xp.asarray first")


def unwrap(value, what):
    """The NumPy arrays inside device arrays, in nested tuples, lists and dicts; a host array is refused."""
    if isinstance(value, DeviceArray):
        return value.memory
    if isinstance(value, np.ndarray):
        raise to_host_refused(what)
    if isinstance(value, (tuple, list)):
        return type(value)(unwrap(v, what) for v in value)
    if isinstance(value, dict):
        return {k: unwrap(v, what) for k, v in value.items()}
    return value


def wrap(value):
    """NumPy results as device arrays; a NumPy scalar becomes a 0-d device array, as CuPy returns them."""
    if isinstance(value, (np.ndarray, np.generic)):
        return DeviceArray(np.asarray(value))
    if isinstance(value, tuple):
        return tuple(wrap(v) for v in value)
    return value


class OnDevice:
    """A NumPy function (or ufunc, or array method) that takes and returns device arrays only."""

    def __init__(self, fn, name):
        self.fn, self.name = fn, name

    def __call__(self, *args, **kwargs):
        return wrap(self.fn(*unwrap(args, self.name), **unwrap(kwargs, self.name)))

    def __getattr__(self, name):  # a ufunc's methods: xp.add.at(...)
        return OnDevice(getattr(self.fn, name), f"{self.name}.{name}")


class GuardNamespace:
    """The stand-in for ``cupy``: NumPy's functions, restricted to CUPY_NAMES, on device arrays."""

    __name__ = "guard"

    def asarray(self, x, dtype=None):
        """The one way in from the host, as cupy.asarray: a copy of a host array, or a device array itself."""
        if isinstance(x, DeviceArray):
            return x if dtype is None or x.dtype == dtype else x.astype(dtype)
        return DeviceArray(np.array(x, dtype=dtype))

    def __getattr__(self, name):
        if name not in CUPY_NAMES:
            raise AttributeError(f"xp.{name}: not in the stand-in's CUPY_NAMES (a NumPy-only name breaks on CuPy)")
        value = getattr(np, name)
        if isinstance(value, type) or not callable(value):  # dtypes, finfo, inf: nothing to move
            return value
        return OnDevice(value, f"xp.{name}")


GUARD = GuardNamespace()


def operator(ufunc):
    """``x <op> y``: both operands on the device (or Python and NumPy scalars), as CuPy takes them."""
    return lambda self, other: OnDevice(ufunc, f"np.{ufunc.__name__}")(self, other)


def reflected(ufunc):
    """``y <op> x`` where y is not a device array (a scalar: a host array is refused)."""
    return lambda self, other: OnDevice(ufunc, f"np.{ufunc.__name__}")(other, self)


def in_place(ufunc):
    """``x <op>= y``, written into x's own memory, as NumPy and CuPy do."""

    def method(self, other):
        OnDevice(ufunc, f"np.{ufunc.__name__}")(self, other, out=self)
        return self

    return method


def unary(ufunc):
    return lambda self: OnDevice(ufunc, f"np.{ufunc.__name__}")(self)


class DeviceArray:
    """An array "on the device": a NumPy array inside, reached only through GUARD's functions, the operators,
    the array's own methods, and ``get``."""

    __add__, __radd__, __iadd__ = operator(np.add), reflected(np.add), in_place(np.add)
    __sub__, __rsub__, __isub__ = operator(np.subtract), reflected(np.subtract), in_place(np.subtract)
    __mul__, __rmul__, __imul__ = operator(np.multiply), reflected(np.multiply), in_place(np.multiply)
    __truediv__, __rtruediv__, __itruediv__ = operator(np.divide), reflected(np.divide), in_place(np.divide)
    __floordiv__, __mod__ = operator(np.floor_divide), operator(np.remainder)
    __pow__, __rpow__ = operator(np.power), reflected(np.power)
    __matmul__, __rmatmul__ = operator(np.matmul), reflected(np.matmul)
    __and__, __iand__ = operator(np.bitwise_and), in_place(np.bitwise_and)
    __or__, __ior__ = operator(np.bitwise_or), in_place(np.bitwise_or)
    __xor__, __rshift__, __lshift__ = operator(np.bitwise_xor), operator(np.right_shift), operator(np.left_shift)
    __lt__, __le__ = operator(np.less), operator(np.less_equal)
    __gt__, __ge__ = operator(np.greater), operator(np.greater_equal)
    __eq__, __ne__ = operator(np.equal), operator(np.not_equal)
    __neg__, __abs__, __invert__ = unary(np.negative), unary(np.absolute), unary(np.invert)
    __hash__ = None

    def __init__(self, memory):
        self.memory = memory  # [...] the NumPy array that stands for device memory (not ndarray.data, a buffer)

    def __array_namespace__(self):
        return GUARD  # what backend.xp_of returns for this array

    def get(self):
        """Copy to the host, as cupy.ndarray.get (what backend.to_numpy calls)."""
        return self.memory.copy()

    def __array__(self, dtype=None, copy=None):
        raise TypeError("implicit conversion of a device array to a NumPy array (as CuPy): use backend.to_numpy")

    def __array_function__(self, func, types, args, kwargs):
        raise TypeError(f"np.{func.__name__} called on a device array: model code must call xp.{func.__name__}")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        raise TypeError(f"np.{ufunc.__name__} called on a device array: model code must call xp.{ufunc.__name__}")

    def __getattr__(self, name):  # shape, dtype, ndim, T, astype, reshape, sum, argmax...
        if name.startswith("__"):  # NumPy's own ways in (__array_interface__, __array_struct__) stay closed
            raise AttributeError(name)
        value = getattr(self.memory, name)
        return OnDevice(value, f".{name}") if callable(value) else wrap(value)

    def __getitem__(self, index):
        return wrap(self.memory[unwrap(index, "an index")])

    def __setitem__(self, index, value):
        self.memory[unwrap(index, "an index")] = unwrap(value, "an assigned value")

    def __len__(self):
        return len(self.memory)

    def __float__(self):
        return float(self.memory)

    def __int__(self):
        return int(self.memory)

    def __bool__(self):
        return bool(self.memory)

    def __repr__(self):
        return f"DeviceArray({self.memory!r})"


def on_guard(model):
    """The same model with its parameters on the stand-in device: what load_model(device="cuda") does with
    cupy (loading/checkpoint.py), with GUARD; ``xp`` and the rotary frequencies, made in __init__ from the
    device name, are set to GUARD's by hand (the stand-in is no device name users can ask for)."""
    params = _map_arrays(lambda a: GUARD.asarray(np.ascontiguousarray(a)), model.params)
    guarded = LlavaModel(
        model.config, params, dtype=str(model.dtype), generation_defaults=model.generation_defaults,
        attn_implementation=model.attn_implementation, fused_kernels=model.fused_kernels,
    )  # fmt: skip
    text = model.config.text
    guarded.xp = GUARD
    guarded.inv_freq = inverse_frequencies(GUARD, text.head_dim, text.rope_theta, text.rope_scaling)  # [hd/2]
    return guarded


# -- the guard itself catches what it is meant to ------------------------------------------------------------


def test_np_asarray_of_a_device_array_is_refused():
    with pytest.raises(TypeError, match="implicit conversion of a device array"):
        np.asarray(GUARD.asarray([1.0, 2.0]))


def test_a_numpy_function_on_a_device_array_is_refused():
    with pytest.raises(TypeError, match=r"np\.concatenate called on a device array"):
        np.concatenate([GUARD.asarray([1.0]), GUARD.asarray([2.0])])


def test_a_host_array_mixed_into_a_device_operation_is_refused():
    x = GUARD.asarray([1.0, 2.0])
    with pytest.raises(TypeError, match=r"np\.add: a host \(NumPy\) array"):
        x + np.ones(2)
    with pytest.raises(TypeError, match=r"xp\.where: a host \(NumPy\) array"):
        GUARD.where(np.array([True, False]), x, 0.0)
    with pytest.raises(TypeError, match=r"an assigned value: a host \(NumPy\) array"):
        x[0:1] = np.zeros(1)


def test_a_numpy_only_name_is_refused():
    with pytest.raises(AttributeError, match=r"xp\.errstate"):
        _ = GUARD.errstate


def test_a_numpy_ufunc_on_a_device_array_is_refused():
    with pytest.raises(TypeError, match=r"np\.exp called on a device array: model code must call xp\.exp"):
        np.exp(GUARD.asarray([1.0]))


def test_a_numpy_call_inside_the_model_is_caught(tiny_checkpoint, monkeypatch):
    """What the guard is for: a NumPy call slipped into model code fails the whole forward, naming the call."""
    guarded = on_guard(minillava.load_model(tiny_checkpoint("base", "fresh", "float32", False)))
    monkeypatch.setattr(minillava.model.llava, "lm_head", lambda weight, hidden: np.matmul(hidden, weight.T))
    input_ids, attention_mask, _ = make_inputs(guarded.config, np.random.default_rng(0), [[5]])
    with pytest.raises(TypeError, match=r"np\.matmul called on a device array"):
        guarded.forward(input_ids, attention_mask=attention_mask)


def test_backend_sees_the_device_and_brings_arrays_back():
    x = GUARD.asarray(np.arange(3.0))
    assert backend.xp_of(x) is GUARD
    back = backend.to_numpy(x)
    assert type(back) is np.ndarray and back.tolist() == [0.0, 1.0, 2.0]


# -- the model on the stand-in device equals the model on NumPy ---------------------------------------------


@pytest.fixture(scope="module", params=["base", "interleave"], ids=["llava-1.5", "interleave"])
def cpu_and_guarded(request, tiny_checkpoint):
    """(NumPy model, the same on the stand-in device) for each family (CLIP + Llama, SigLIP + Qwen2)."""
    model = minillava.load_model(tiny_checkpoint(request.param, "fresh", "float32", False))
    return model, on_guard(model)


def test_forward_with_trace_equals_numpy(cpu_and_guarded):
    model, guarded = cpu_and_guarded
    input_ids, attention_mask, pixel_values = make_inputs(model.config, np.random.default_rng(0), [[4, "img", 3]])
    trace, guarded_trace = {}, {}
    ref = model.forward(input_ids, pixel_values=pixel_values, attention_mask=attention_mask, trace=trace)
    ours = guarded.forward(input_ids, pixel_values=pixel_values, attention_mask=attention_mask, trace=guarded_trace)
    assert type(ours) is np.ndarray and np.array_equal(ours, ref)
    assert guarded_trace.keys() == trace.keys()
    for name, array in trace.items():
        assert np.array_equal(backend.to_numpy(guarded_trace[name]), backend.to_numpy(array)), name


def test_encode_image_of_device_pixels_equals_numpy(cpu_and_guarded):
    model, guarded = cpu_and_guarded
    _, _, pixel_values = make_inputs(model.config, np.random.default_rng(1), [["img", 2]])
    ours = guarded.encode_image(GUARD.asarray(pixel_values))  # pixels already on the device
    assert isinstance(ours, DeviceArray)
    assert np.array_equal(backend.to_numpy(ours), model.encode_image(pixel_values))


@pytest.mark.parametrize("settings", [{}, {"do_sample": True, "top_k": 5, "top_p": 0.9, "repetition_penalty": 1.3,
                                           "temperature": 0.7, "seed": 3}], ids=["greedy", "sampled"])  # fmt: skip
def test_generate_equals_numpy(cpu_and_guarded, settings):
    model, guarded = cpu_and_guarded
    input_ids, attention_mask, pixel_values = make_inputs(model.config, np.random.default_rng(2), [[3, "img", 2], [5]])
    kwargs = {"pixel_values": pixel_values, "attention_mask": attention_mask, "max_new_tokens": 6, **settings}
    assert np.array_equal(guarded.generate(input_ids, **kwargs), model.generate(input_ids, **kwargs))


def test_tiled_attention_equals_numpy(cpu_and_guarded):
    model, _ = cpu_and_guarded
    tiled = minillava.model.llava.LlavaModel(
        model.config, model.params, generation_defaults=model.generation_defaults, attn_implementation="tiled"
    )
    input_ids, attention_mask, pixel_values = make_inputs(model.config, np.random.default_rng(3), [[4, "img", 3]])
    kwargs = {"pixel_values": pixel_values, "attention_mask": attention_mask}
    assert np.array_equal(on_guard(tiled).forward(input_ids, **kwargs), tiled.forward(input_ids, **kwargs))


def test_fused_kernels_equal_numpy(cpu_and_guarded):
    """fused_kernels=True: the fused bodies (model/fused.py) run unfused on the stand-in, as on NumPy, so they must
    take only CuPy's names (xp.sum and xp.max are cupy.sum and cupy.max) and bring nothing to the host."""
    model, _ = cpu_and_guarded
    with_fused = minillava.model.llava.LlavaModel(
        model.config, model.params, generation_defaults=model.generation_defaults, fused_kernels=True
    )
    input_ids, attention_mask, pixel_values = make_inputs(model.config, np.random.default_rng(6), [[4, "img", 3], [2]])
    kwargs = {"pixel_values": pixel_values, "attention_mask": attention_mask}
    assert np.array_equal(on_guard(with_fused).forward(input_ids, **kwargs), with_fused.forward(input_ids, **kwargs))
    kwargs["max_new_tokens"] = 4
    assert np.array_equal(on_guard(with_fused).generate(input_ids, **kwargs), with_fused.generate(input_ids, **kwargs))


@pytest.mark.parametrize("scheme", ["int8", "nf4"])
def test_quantized_weights_equal_numpy(tiny_checkpoint, scheme):
    """Quantized weights go to a GPU as integers and scales (load_model(..., device="cuda", quantize=...))."""
    model = minillava.load_model(tiny_checkpoint("base", "fresh", "float32", False), quantize=scheme)
    input_ids, attention_mask, pixel_values = make_inputs(model.config, np.random.default_rng(4), [[4, "img", 3]])
    kwargs = {"pixel_values": pixel_values, "attention_mask": attention_mask}
    assert np.array_equal(on_guard(model).forward(input_ids, **kwargs), model.forward(input_ids, **kwargs))


def test_loss_and_gradients_equal_numpy(cpu_and_guarded):
    model, guarded = cpu_and_guarded
    input_ids, attention_mask, pixel_values = make_inputs(model.config, np.random.default_rng(5), [[3, "img", 5]])
    labels = make_labels(input_ids, attention_mask, model.config)
    ref_loss, ref_grads = model.loss_and_gradients(input_ids, pixel_values, attention_mask, labels, training.PARTS)
    loss, grads = guarded.loss_and_gradients(input_ids, pixel_values, attention_mask, labels, training.PARTS)
    assert loss == ref_loss
    flat, ref_flat = _flatten(grads), _flatten(ref_grads)
    assert flat.keys() == ref_flat.keys()
    for name, grad in ref_flat.items():
        assert np.array_equal(backend.to_numpy(flat[name]), backend.to_numpy(grad)), name


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}{key}.").items()}
    if isinstance(tree, list):
        return {k: v for i, sub in enumerate(tree) for k, v in _flatten(sub, f"{prefix}{i}.").items()}
    return {prefix[:-1]: tree}
