"""Choosing NumPy or CuPy.

Model code never calls ``np.`` for math: it asks ``xp_of(x)`` for the array namespace of its input
and uses that, so the same function runs on NumPy arrays (CPU) and on CuPy arrays (GPU). Arrays
cross between host and device only at the edges, through ``to_device`` and ``to_numpy``.
"""

from __future__ import annotations

import numpy as np

DEVICES = ("cpu", "cuda")


def _cupy():
    """Import CuPy, or explain in one line why the GPU path is not available."""
    try:
        import cupy
    except ImportError as err:
        raise RuntimeError(
            "device='cuda' needs CuPy: install it with `pip install minillava[gpu]` "
            "(or the cupy-cudaXXx wheel matching your CUDA)"
        ) from err
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("device='cuda' was asked for, but CuPy sees no GPU")
    except cupy.cuda.runtime.CUDARuntimeError as err:
        raise RuntimeError(f"device='cuda' was asked for, but CUDA is not usable: {err}") from err
    return cupy


def check_device(device: str) -> str:
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    return device


def xp_of(x):
    """The array namespace (numpy or cupy) that ``x`` belongs to."""
    if isinstance(x, np.ndarray) or np.isscalar(x):
        return np
    module = type(x).__module__.split(".")[0]
    if module == "cupy":
        import cupy

        return cupy
    # Any other array type that names its own namespace (the Python array API's protocol), such as the tests'
    # stand-in device (tests/model/test_device_guard.py), which fails where CuPy would and so guards this path.
    own_namespace = getattr(x, "__array_namespace__", None)
    return own_namespace() if own_namespace is not None else np


def is_cupy(xp) -> bool:
    """Whether the namespace ``xp`` is CuPy itself (not NumPy, nor the tests' stand-in device): where GPU-only work,
    compiling a fused kernel or recording a CUDA graph, can happen."""
    return getattr(xp, "__name__", "") == "cupy"


def namespace(device: str):
    """The array namespace for a device name."""
    return _cupy() if check_device(device) == "cuda" else np


def to_device(x, device: str):
    """Move a host array to ``device`` (no copy when it is already there)."""
    if check_device(device) == "cpu":
        return to_numpy(x)
    return _cupy().asarray(x)


def to_numpy(x) -> np.ndarray:
    """Bring an array back to the host as a NumPy array."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "get"):  # cupy.ndarray (and the tests' stand-in device array)
        return x.get()
    return np.asarray(x)
