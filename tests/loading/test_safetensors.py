"""minillava.loading.safetensors, the reader of the checkpoint files: memory mapping without reading, every
bfloat16 value decoded bit for bit, and each broken file (truncated, bad header, unknown dtype, offsets that
do not fit) refused with one clear error naming the file and the tensor."""

from __future__ import annotations

import json
import os
import re
import struct

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from minillava.loading.safetensors import bfloat16_to_float32  # noqa: E402
from minillava.loading.weights import load_weights  # noqa: E402

from .weight_files import KEY, build_model, raw_safetensors, write_checkpoint  # noqa: E402

# --------------------------------------------------------------------------------------------------
# Memory mapping and bfloat16
# --------------------------------------------------------------------------------------------------


def _rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def test_float16_stays_memory_mapped(tmp_path):
    """dtype=None maps a 64 MiB float16 file without reading it: RSS stays well below the file size."""
    from safetensors.numpy import save_file as save_numpy

    weight = np.arange(4096 * 8192, dtype=np.uint16).view(np.float16).reshape(4096, 8192)  # 64 MiB
    save_numpy({"language_model.model.layers.0.mlp.up_proj.weight": weight}, str(tmp_path / "model.safetensors"))
    del weight
    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs /proc/self/status")
    before = _rss_bytes()
    params = load_weights(tmp_path, dtype=None)
    grown = _rss_bytes() - before
    w = params["language_model"]["layers"][0]["mlp"]["up_proj"]["weight"]
    assert isinstance(w, np.memmap) and w.dtype == np.float16 and w.shape == (4096, 8192)
    assert not w.flags.writeable
    assert grown < 16 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB for a 64 MiB file"
    assert w[4095, 8191].view(np.uint16) == (4096 * 8192 - 1) % 65536
    with pytest.raises(ValueError):
        w[0, 0] = 1.0


# Every kind of bfloat16 value, as bit patterns.
BF16_SPECIALS = {
    0x0000: 0.0,
    0x8000: -0.0,
    0x3F80: 1.0,
    0xC000: -2.0,
    0x7F80: np.inf,
    0xFF80: -np.inf,
    0x7FC0: np.nan,
    0xFFC1: np.nan,  # negative nan with a payload
    0x0001: 2.0**-133,  # smallest subnormal
    0x807F: -(2.0**-126) * 127 / 128,  # largest negative subnormal
    0x0080: 2.0**-126,  # smallest normal
    0x7F7F: 3.3895313892515355e38,  # largest finite
    0x3E20: 0.15625,
}


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # bf16 max -> float16 is inf, as in torch
@pytest.mark.filterwarnings("ignore::minillava.loading.weights.NonFiniteWeightsWarning")  # NaN and inf on purpose
def test_bfloat16_special_values(tmp_path):
    bits = np.array(list(BF16_SPECIALS), dtype=np.uint16)
    raw_safetensors(
        tmp_path / "model.safetensors",
        {"multi_modal_projector.linear_2.bias": ("BF16", bits.shape, bits.tobytes())},
        metadata={"format": "pt"},
    )
    reference = torch.from_numpy(bits.view(np.int16).copy()).view(torch.bfloat16)

    decoded = load_weights(tmp_path, dtype=None)["multi_modal_projector"]["linear_2"]["bias"]
    assert decoded.dtype == np.float32
    # Bit-exact: same sign of zero, same nan payload, subnormals kept.
    assert np.array_equal(decoded.view(np.uint32), bits.astype(np.uint32) << 16)
    assert np.array_equal(decoded.view(np.uint32), reference.float().numpy().view(np.uint32))
    expected = np.array(list(BF16_SPECIALS.values()), dtype=np.float64)
    assert np.array_equal(decoded.astype(np.float64), expected, equal_nan=True)
    assert np.signbit(decoded[1]) and not np.signbit(decoded[0])

    as_f32 = load_weights(tmp_path, dtype="float32")["multi_modal_projector"]["linear_2"]["bias"]
    assert np.array_equal(as_f32.view(np.uint32), decoded.view(np.uint32))
    # float16: one rounding from the exact value, like torch's bfloat16 -> float16 cast.
    as_f16 = load_weights(tmp_path, dtype="float16")["multi_modal_projector"]["linear_2"]["bias"]
    want = reference.to(torch.float16).numpy()
    finite = ~np.isnan(want)
    assert np.array_equal(as_f16[finite].view(np.uint16), want[finite].view(np.uint16))
    assert np.isnan(as_f16[~finite]).all()


def test_bfloat16_to_float32_keeps_shape():
    bits = np.array([[0x3F80, 0x4000], [0x4040, 0x4080]], dtype=np.uint16)
    assert np.array_equal(bfloat16_to_float32(bits), np.array([[1, 2], [3, 4]], np.float32))


# --------------------------------------------------------------------------------------------------
# Broken files
# --------------------------------------------------------------------------------------------------


def test_truncated_files(tmp_path):
    model = build_model()
    folder = tmp_path / "copy"  # the in-memory layout, single file, float32
    write_checkpoint(folder, model.state_dict(), model.config)
    path = folder / "model.safetensors"
    blob = path.read_bytes()
    header_size = struct.unpack("<Q", blob[:8])[0]

    path.write_bytes(blob[:5])  # not even the length prefix
    with pytest.raises(ValueError, match=r"model\.safetensors: .*5 bytes"):
        load_weights(folder)
    path.write_bytes(blob[: 8 + header_size // 2])  # header cut
    with pytest.raises(ValueError, match=rf"model\.safetensors: header length {header_size} runs past"):
        load_weights(folder)
    path.write_bytes(blob[:-10])  # the last tensor's bytes cut
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor '.*': data_offsets .* run past the end"):
        load_weights(folder)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"model\.safetensors: .*0 bytes"):
        load_weights(folder)


def test_header_not_json(tmp_path):
    bad = b"{not json at all"
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(bad)) + bad)
    with pytest.raises(ValueError, match=r"model\.safetensors: the safetensors header is not valid JSON"):
        load_weights(tmp_path)
    bad = b"[1, 2]"
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(bad)) + bad)
    with pytest.raises(ValueError, match=r"model\.safetensors: the safetensors header is a JSON list"):
        load_weights(tmp_path)


def test_unknown_dtype(tmp_path):
    raw_safetensors(tmp_path / "model.safetensors", {KEY: ("F7", (4,), bytes(16))})
    with pytest.raises(ValueError, match=rf"model\.safetensors: tensor '{KEY}': unknown or unsupported dtype 'F7'"):
        load_weights(tmp_path)


def test_offsets_that_do_not_match_the_shape(tmp_path):
    raw_safetensors(tmp_path / "model.safetensors", {KEY: ("F32", (5,), bytes(16))})
    with pytest.raises(ValueError, match=rf"tensor '{KEY}': data_offsets \[0, 16\] span 16 bytes.*needs 20"):
        load_weights(tmp_path)


def _write(path, header: dict, data: bytes, header_size_delta: int = 0):
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)  # padded, as save_file pads: a length one byte short still parses as JSON
    path.write_bytes(struct.pack("<Q", len(blob) + header_size_delta) + blob + data)


def test_data_must_be_covered_exactly(tmp_path):
    """The reference reader's rule: tensors cover the data buffer one after another, no gap, no overlap, nothing
    after them. Each of these used to load, reading weights shifted or shared, without a word."""
    path = tmp_path / "model.safetensors"
    a = {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}
    b = {"dtype": "F32", "shape": [4], "data_offsets": [16, 32]}
    data = np.arange(8, dtype=np.float32).tobytes()
    _write(path, {KEY: a, "other": b}, data, header_size_delta=-1)  # the length field one byte short
    with pytest.raises(ValueError, match=r"the tensors cover 32 bytes of data but the file holds 33"):
        load_weights(tmp_path)
    _write(path, {KEY: a, "other": {**b, "data_offsets": [8, 24]}}, data[:24])  # the second overlaps the first
    with pytest.raises(ValueError, match=r"tensor 'other' starts at byte 8 of the data, which overlaps"):
        load_weights(tmp_path)
    _write(path, {KEY: a, "other": {**b, "data_offsets": [20, 36]}}, data + bytes(4))  # a gap between them
    with pytest.raises(ValueError, match=r"tensor 'other' starts at byte 20 of the data, which leaves a gap"):
        load_weights(tmp_path)
    _write(path, {KEY: a, "other": b}, data + b"extra")  # bytes appended
    with pytest.raises(ValueError, match=r"cover 32 bytes of data but the file holds 37"):
        load_weights(tmp_path)


def test_a_dtype_that_is_not_a_string(tmp_path):
    raw_safetensors(tmp_path / "model.safetensors", {KEY: (["F32"], (4,), bytes(16))})
    with pytest.raises(ValueError, match=rf"tensor '{KEY}': unknown or unsupported dtype \['F32'\]"):
        load_weights(tmp_path)


def test_header_length_over_the_formats_limit(tmp_path):
    """A corrupt length field must not make the reader take gigabytes as JSON: the reference reader's limit is
    100 MB, checked before anything is read."""
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", 2**40) + b"{}" + bytes(64))
    with pytest.raises(ValueError, match=r"model\.safetensors: header length 1099511627776 is over the format's limit"):
        load_weights(tmp_path)


def test_header_nested_thousands_deep(tmp_path):
    deep = b"[" * 100_000 + b"]" * 100_000
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(deep)) + deep)
    with pytest.raises(ValueError, match=r"model\.safetensors: the safetensors header is JSON nested too deeply"):
        load_weights(tmp_path)


@pytest.mark.parametrize(
    "shape, offsets, words",
    [
        ([True, 4], [0, 16], r"shape must be a list of at most 64 non-negative integers, got \[True, 4\]"),
        (
            [1] * 65,
            [0, 4],
            r"shape must be a list of at most 64 non-negative integers, got \[1, 1, 1, 1, 1, 1, \.\.\.\]",
        ),
        ([4], [False, 16], r"data_offsets must be \[begin, end\], begin <= end, got \[False, 16\]"),
        ([4], [-16, 0], r"data_offsets must be \[begin, end\], begin <= end, got \[-16, 0\]"),
    ],
    ids=["true-in-shape", "65-dimensions", "false-offset", "negative-offset"],
)
def test_shape_and_offsets_that_are_not_counts(tmp_path, shape, offsets, words):
    """JSON's true and false are Python ints; a NumPy array holds at most 64 dimensions."""
    header = {KEY: {"dtype": "F32", "shape": shape, "data_offsets": offsets}}
    _write(tmp_path / "model.safetensors", header, bytes(16))
    with pytest.raises(ValueError, match=rf"model\.safetensors: tensor '{KEY}': {words}"):
        load_weights(tmp_path)


def test_a_huge_header_entry_is_shortened_in_the_message(tmp_path):
    header = {KEY: {"dtype": "F32", "shape": list(range(10_000))}}  # no data_offsets
    _write(tmp_path / "model.safetensors", header, b"")
    with pytest.raises(ValueError, match=r"header entry must have dtype, shape and data_offsets") as caught:
        load_weights(tmp_path)
    assert len(str(caught.value)) < 400


@pytest.mark.parametrize("dtype, shape", [("F32", [0, 2**62]), ("U8", [2**61, 0])])
def test_empty_tensor_with_a_dimension_too_large_for_any_array(tmp_path, dtype, shape):
    """A shape with a zero holds no bytes, so its offsets fit; but NumPy cannot make the array, nor its cast to
    float32 (2**61 items of 4 bytes are more than NumPy's 2**63)."""
    header = {KEY: {"dtype": dtype, "shape": shape, "data_offsets": [0, 0]}}
    _write(tmp_path / "model.safetensors", header, b"")
    with pytest.raises(ValueError, match=rf"tensor '{KEY}': shape {re.escape(str(shape))} is too large for any array"):
        load_weights(tmp_path)
