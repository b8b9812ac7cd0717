"""load_model(..., quantize=...): the language model's linear weights quantized as they are read (from the file's
dtype, one matrix at a time), nothing else touched, the memory plan counting the quantized sizes, and checkpoints
saved already quantized (bitsandbytes, GPTQ/AWQ) refused with one clear error before any weight is read."""

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import minillava
from minillava.loading import weights
from minillava.loading.memory import RESERVE, GiB, weight_bytes
from minillava.loading.weights import expected_shapes, file_dtypes, flatten, is_quantized
from minillava.model.quantize import FORMATS, QuantizedWeight, dequantize, quantize

DATA = Path(__file__).resolve().parents[1] / "data"

# Both families (llava-1.5: CLIP + Llama; llava-interleave: SigLIP + Qwen2, tied embeddings), each in the three
# file dtypes and three key layouts.
CHECKPOINTS = [
    ("base", "fresh", "float32", False),
    ("base", "hub", "float16", True),
    ("base", "internal", "bfloat16", False),
    ("interleave", "hub", "float32", False),
    ("interleave", "hub", "float16", True),
    ("interleave", "internal", "bfloat16", False),
]


def arrays(model):
    return flatten(model.params)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("checkpoint", CHECKPOINTS, ids=lambda c: f"{c[0]}-{c[2]}")
def test_quantized_models_load(tiny_checkpoint, checkpoint, fmt):
    """Exactly the language model's q/k/v/o and gate/up/down weights are quantized, each as quantize() makes it
    from the file's values; every other tensor is the float model's; and the quantized model computes exactly
    what the float model computes with those weights dequantized."""
    folder = tiny_checkpoint(*checkpoint)
    plain = minillava.load_model(folder, low_memory=True)  # the file's dtype (bfloat16 decoded to float32)
    model = minillava.load_model(folder, quantize=fmt, low_memory=False)
    ours, theirs = arrays(model), arrays(plain)
    quantized = {key for key, value in ours.items() if isinstance(value, QuantizedWeight)}
    assert quantized == {key for key in expected_shapes(model.config) if is_quantized(key)}
    assert len(quantized) == 7 * model.config.text.num_hidden_layers
    for key, value in ours.items():
        if key in quantized:
            expected = quantize(theirs[key], fmt)
            assert value.format == fmt and value.shape == theirs[key].shape
            np.testing.assert_array_equal(value.data, expected.data)
            np.testing.assert_array_equal(value.scales, expected.scales)
        else:
            assert value.dtype == np.float32
            np.testing.assert_array_equal(value, theirs[key])

    dequantized = minillava.load_model(folder, low_memory=False)
    for layer in dequantized.params["language_model"]["layers"]:
        for block in (layer["self_attn"], layer["mlp"]):
            for linear in block.values():
                linear["weight"] = dequantize(quantize(linear["weight"], fmt))
    ids = np.array([[1, 5, 7, 9, 11, 3, 2]])
    np.testing.assert_array_equal(model.forward(ids), dequantized.forward(ids))


@pytest.mark.parametrize("fmt", FORMATS)
def test_at_rest_and_in_ram_compute_the_same(tiny_checkpoint, fmt):
    """With low_memory=True the other weights stay float16 and memory-mapped; the quantized ones are the same."""
    folder = tiny_checkpoint("base", "hub", "float16", True)
    mapped = minillava.load_model(folder, quantize=fmt, low_memory=True)
    assert isinstance(mapped.params["lm_head"]["weight"], np.memmap)
    in_ram = minillava.load_model(folder, quantize=fmt, low_memory=False)
    ids = np.array([[1, 5, 7, 9]])
    np.testing.assert_array_equal(mapped.forward(ids), in_ram.forward(ids))


def test_each_weight_is_quantized_from_the_files_dtype(tiny_checkpoint, monkeypatch):
    """Never the whole model in float32: the loader reads one float16 matrix at a time, as the file holds it, into
    memory of its own (not a view of the memory map, whose pages would stay counted in the process's memory) and
    hands it to quantize(), which casts that one matrix to float32."""
    seen = []

    def spy(weight, fmt):
        seen.append((type(weight), weight.dtype, weight.base is None or not isinstance(weight.base, np.memmap)))
        return quantize(weight, fmt)

    monkeypatch.setattr(weights, "quantize_weight", spy)
    minillava.load_model(tiny_checkpoint("base", "hub", "float16", True), quantize="int8", low_memory=False)
    assert seen == [(np.ndarray, np.float16, True)] * 14


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("checkpoint", [CHECKPOINTS[1], CHECKPOINTS[4]], ids=["base", "interleave"])
def test_the_memory_plan_counts_the_quantized_sizes(tiny_checkpoint, checkpoint, fmt):
    folder = tiny_checkpoint(*checkpoint)
    model = minillava.load_model(folder, quantize=fmt, low_memory=False)
    held = {id(v): v.nbytes for v in arrays(model).values()}  # a tied lm_head is the embedding itself
    in_ram, at_rest = weight_bytes(expected_shapes(model.config), file_dtypes(folder), "float32", fmt)
    assert in_ram == sum(held.values())
    mapped = minillava.load_model(folder, quantize=fmt, low_memory=True)
    assert at_rest == sum({id(v): v.nbytes for v in arrays(mapped).values()}.values())


def test_the_memory_plan_of_llava_7b():
    """llava-1.5-7b-hf's float16 files (published config): what each choice holds, exactly."""
    config = minillava.load_config(DATA / "llava-1.5-7b-hf")
    shapes = expected_shapes(config)
    dtypes = dict.fromkeys(shapes, "F16")
    sizes = {fmt: weight_bytes(shapes, dtypes, "float32", fmt) for fmt in (None, *FORMATS)}
    assert sizes == {
        None: (28_253_708_288, 14_126_854_144),  # 26.3 GiB in float32, 13.2 GiB as float16 at rest
        "int8": (8_831_131_648, 7_656_288_256),  # 8.2 GiB (the rest in float32), 7.1 GiB (the rest float16)
        "int4": (5_992_439_808, 4_817_596_416),  # 5.6 GiB, 4.5 GiB
        "nf4": (5_992_439_808, 4_817_596_416),
    }


def test_too_small_a_budget_names_the_quantization(tiny_checkpoint):
    folder = tiny_checkpoint("base", "hub", "float16", True)
    config = minillava.load_config(folder)
    _, at_rest = weight_bytes(expected_shapes(config), file_dtypes(folder), "float32", "int8")
    with pytest.raises(MemoryError, match=r"in the file's dtype with the language model's linear weights in int8 .*"
                                          r"quantize='int4' or 'nf4'"):  # fmt: skip
        minillava.load_model(folder, quantize="int8", memory_budget=at_rest + RESERVE - 1)
    plan = minillava.load_model(folder, quantize="nf4", memory_budget=64 * GiB)
    assert plan.params["lm_head"]["weight"].dtype == np.float32  # roomy: the rest in RAM as float32


# ---------------------------------------------------------------------------------------------
# Checkpoints saved already quantized
# ---------------------------------------------------------------------------------------------

Q_PROJ = "language_model.model.layers.0.self_attn.q_proj"


def bitsandbytes_4bit(tensors):
    """Params4bit's names (checked against a checkpoint Transformers + bitsandbytes 0.50 saved): the packed uint8
    weight, then its quant_state: absmax, quant_map and the packed JSON of the rest."""
    n = tensors[Q_PROJ + ".weight"].size
    tensors[Q_PROJ + ".weight"] = np.zeros((n // 2, 1), np.uint8)
    tensors[Q_PROJ + ".weight.absmax"] = np.ones(n // 64, np.float32)
    tensors[Q_PROJ + ".weight.quant_map"] = np.linspace(-1, 1, 16, dtype=np.float32)
    tensors[Q_PROJ + ".weight.quant_state.bitsandbytes__nf4"] = np.zeros(90, np.uint8)


def bitsandbytes_8bit(tensors):
    """Linear8bitLt's: the int8 weight, its row maxima SCB, and weight_format."""
    weight = tensors[Q_PROJ + ".weight"]
    tensors[Q_PROJ + ".weight"] = np.zeros(weight.shape, np.int8)
    tensors[Q_PROJ + ".SCB"] = np.ones(weight.shape[0], np.float32)
    tensors[Q_PROJ + ".weight_format"] = np.zeros((), np.uint8)


def gptq(tensors):
    """AutoGPTQ's / AutoAWQ's: eight 4-bit values per int32 (qweight, qzeros), float16 scales, g_idx."""
    F, D = tensors.pop(Q_PROJ + ".weight").shape
    tensors[Q_PROJ + ".qweight"] = np.zeros((D // 8, F), np.int32)
    tensors[Q_PROJ + ".qzeros"] = np.zeros((1, F // 8), np.int32)
    tensors[Q_PROJ + ".scales"] = np.ones((1, F), np.float16)
    tensors[Q_PROJ + ".g_idx"] = np.zeros(D, np.int32)


@pytest.mark.parametrize(
    ("edit", "name"),
    [(bitsandbytes_4bit, r"bitsandbytes 4-bit \(nf4/fp4, load_in_4bit\)"),
     (bitsandbytes_8bit, r"bitsandbytes 8-bit \(LLM\.int8, load_in_8bit\)"),
     (gptq, r"GPTQ or AWQ \(qweight/qzeros/scales\)")],
)  # fmt: skip
def test_prequantized_checkpoints_are_refused_before_reading(tiny_checkpoint, tmp_path, monkeypatch, edit, name):
    folder = shutil.copytree(tiny_checkpoint("base", "hub", "float32", False), tmp_path / "ckpt")
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors")

    def no_reading(*args):
        raise AssertionError("a weight was read")

    monkeypatch.setattr(weights, "map_buffer", no_reading)
    for quantize_arg in (None, "int8"):
        with pytest.raises(ValueError) as error:
            minillava.load_model(folder, quantize=quantize_arg)
        message = str(error.value)
        assert message.count("\n") == 0
        assert re.search(f"already quantized, in the {name} format", message)
        assert "minillava does not read that format" in message and "quantize='int8', 'int4' or 'nf4'" in message


@pytest.mark.parametrize("config", ["4bit", "8bit"])
def test_a_checkpoint_bitsandbytes_saved(tiny_checkpoint, tmp_path, config):
    """The same error for what Transformers + bitsandbytes really write (when both, and accelerate, are here)."""
    pytest.importorskip("bitsandbytes")
    pytest.importorskip("accelerate")
    from transformers import BitsAndBytesConfig, LlavaForConditionalGeneration

    settings = {"4bit": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4"), "8bit": dict(load_in_8bit=True)}[config]
    folder = tiny_checkpoint("base", "hub", "float32", False)
    hf = LlavaForConditionalGeneration.from_pretrained(folder, quantization_config=BitsAndBytesConfig(**settings))
    hf.save_pretrained(tmp_path / config)
    with pytest.raises(ValueError, match=f"already quantized, in the bitsandbytes {config[0]}-bit"):
        minillava.load_model(tmp_path / config)
