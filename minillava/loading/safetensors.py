"""The safetensors format, read with NumPy: a header, then the tensors' bytes, which can be memory-mapped.

    [8 bytes]  N, the header length, little-endian unsigned 64-bit
    [N bytes]  JSON header: {"name": {"dtype": "F16", "shape": [4096, 4096], "data_offsets": [begin, end]},
                             ..., "__metadata__": {...}}
    [rest]     the data buffer; a tensor's bytes are buffer[begin:end], row-major, little-endian

We parse it ourselves so that tensors can be memory-mapped (``safetensors.safe_open(..., framework="numpy")``
copies every tensor into memory) and bfloat16, which NumPy cannot represent, can be decoded; a truncated or
corrupt file is caught from its header, before any tensor is used.
"""

from __future__ import annotations

import json
import math
import os
import reprlib

import numpy as np

from .files import is_json_int

# safetensors dtype name -> the NumPy dtype of its bytes (always little-endian in the file).
# bfloat16 has no NumPy dtype: we read its raw 16-bit patterns and decode them (``bfloat16_to_float32``).
SAFETENSORS_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
# The reference reader's limit on the header (safetensors' MAX_HEADER_SIZE, 100 MB): the length field is read from
# the file, and a corrupt one must not make us read gigabytes as JSON. The largest real headers are a few MB.
MAX_HEADER_SIZE = 100_000_000
# NumPy's limit on the number of dimensions of an array.
MAX_DIMS = 64


# --------------------------------------------------------------------------------------------------


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """Decode bfloat16 bit patterns (uint16, any shape) to float32 of the same shape, exactly.

    bfloat16 is the upper half of a float32 (sign, 8-bit exponent, 7-bit mantissa), so shifting the
    16 bits into the high half of a 32-bit word gives the float32 with the same value; inf, nan,
    -0.0 and subnormals included.
    """
    return (bits.astype(np.uint32) << 16).view(np.float32)


def read_header(path: str) -> tuple[dict[str, dict], int]:
    """Parse and validate a safetensors header.

    Returns ({tensor name: {"dtype": str, "shape": tuple, "begin": int, "end": int}}, data_start) where
    begin/end are byte offsets into the data buffer, which starts at byte ``data_start`` of the file.
    Raises ValueError naming the file (and tensor) for a truncated or corrupt file.
    """
    file_size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{path}: not a safetensors file ({file_size} bytes: truncated)")
        header_size = int.from_bytes(prefix, "little")
        if header_size > MAX_HEADER_SIZE:
            raise ValueError(
                f"{path}: header length {header_size} is over the format's limit of {MAX_HEADER_SIZE} bytes "
                "(corrupt, or not a safetensors file)"
            )
        if 8 + header_size > file_size:
            raise ValueError(
                f"{path}: header length {header_size} runs past the end of the {file_size}-byte file "
                "(truncated or not a safetensors file)"
            )
        raw = f.read(header_size)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: the safetensors header is not valid JSON ({err})") from None
    except RecursionError:  # brackets nested thousands deep: no header has them
        raise ValueError(f"{path}: the safetensors header is JSON nested too deeply to be a header") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the safetensors header is a JSON {type(header).__name__}, not an object")

    data_start = 8 + header_size
    buffer_size = file_size - data_start
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        where = f"{path}: tensor {name!r}"
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise ValueError(f"{where}: header entry must have dtype, shape and data_offsets, got {reprlib.repr(info)}")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
            raise ValueError(f"{where}: unknown or unsupported dtype {reprlib.repr(dtype)}")
        if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(_is_count(n) for n in shape):
            raise ValueError(
                f"{where}: shape must be a list of at most {MAX_DIMS} non-negative integers, got {reprlib.repr(shape)}"
            )
        # NumPy's limit on an array is 2**63 bytes: with items of up to 8 bytes (a cast to float64 included), the
        # dimensions, zeros left out, must multiply to less than 2**60. Only an empty tensor (a zero among them) could
        # pass the size check below with larger ones.
        if math.prod(n for n in shape if n) >= 2**60:
            raise ValueError(f"{where}: shape {reprlib.repr(shape)} is too large for any array")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(map(_is_count, offsets))
            or offsets[0] > offsets[1]
        ):
            raise ValueError(f"{where}: data_offsets must be [begin, end], begin <= end, got {reprlib.repr(offsets)}")
        begin, end = offsets
        if end > buffer_size:
            raise ValueError(
                f"{where}: data_offsets {offsets} run past the end of the data buffer "
                f"({buffer_size} bytes; the file is truncated)"
            )
        nbytes = math.prod(shape) * SAFETENSORS_DTYPES[dtype].itemsize
        if end - begin != nbytes:
            raise ValueError(
                f"{where}: data_offsets {offsets} span {end - begin} bytes, but {dtype} of shape {shape} needs {nbytes}"
            )
        tensors[name] = {"dtype": dtype, "shape": tuple(shape), "begin": begin, "end": end}
    # The format's rule, which its reference reader enforces: the tensors cover the data buffer exactly, one after
    # another, with no gap and no overlap. A header length one byte off, or two tensors sharing bytes, break it
    # (and would otherwise read every weight shifted, or one weight as two, without a word).
    covered = 0
    for name, info in sorted(tensors.items(), key=lambda item: (item[1]["begin"], item[1]["end"])):
        if info["begin"] != covered:
            what = "overlaps the tensor before it" if info["begin"] < covered else "leaves a gap before it"
            raise ValueError(f"{path}: tensor {name!r} starts at byte {info['begin']} of the data, which {what} "
                             f"(the previous one ends at {covered}): a corrupt header")  # fmt: skip
        covered = info["end"]
    if covered != buffer_size:
        raise ValueError(
            f"{path}: the tensors cover {covered} bytes of data but the file holds {buffer_size} after its "
            f"{header_size}-byte header (a wrong header length, or bytes appended): not a valid safetensors file"
        )
    return tensors, data_start


def _is_count(n) -> bool:
    """A non-negative JSON integer."""
    return is_json_int(n) and n >= 0


def map_buffer(path: str, data_start: int) -> np.ndarray:
    """The data buffer of a safetensors file as a read-only uint8 np.memmap (nothing is read yet)."""
    size = os.path.getsize(path) - data_start
    if size == 0:  # mmap cannot map zero bytes; only zero-size tensors can live here
        return np.zeros(0, np.uint8)
    return np.memmap(path, dtype=np.uint8, mode="r", offset=data_start, shape=(size,))


def tensor(buffer: np.ndarray, info: dict, dtype: np.dtype | None) -> np.ndarray:
    """One tensor from a mapped buffer: a memory-mapped view (dtype None), else a cast in-memory copy."""
    raw = buffer[info["begin"] : info["end"]].view(SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"])
    if info["dtype"] == "BF16":
        raw = bfloat16_to_float32(raw)  # decoding reads the bytes; the result lives in memory
    if dtype is None:
        return raw
    return np.array(raw, dtype=dtype)  # a plain ndarray (not a memmap) holding its own data
