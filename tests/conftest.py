"""Shared fixtures: tiny LLaVA checkpoints made by Transformers (tests/fixtures/tiny_llava.py), cached
under .fixtures/ across runs, and the Transformers reference model loaded from the same folder."""

import os

# One BLAS/OpenMP thread per process: on 2 cores, small torch forwards with 2 threads can be ~20x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# No tqdm bars from save_pretrained while building fixtures: tests that read stderr see only minillava's own lines.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pytest  # noqa: E402

from .fixtures import tiny_llava  # noqa: E402


def pytest_addoption(parser):
    parser.addoption(
        "--device",
        choices=("cpu", "cuda"),
        default=os.environ.get("MINILLAVA_TEST_DEVICE", "cpu"),
        help="where minillava runs in the tests that compare it with Transformers (which stays on the CPU, "
        "float32): `pytest --device cuda` runs those tests, and only those, with the CuPy path on a GPU (default cpu, "
        "or $MINILLAVA_TEST_DEVICE)",
    )

    parser.addoption(
        "--only-device-tests",
        action="store_true",
        help="run only the tests that `--device cuda` runs, on the device given (tools/gpu_check.sh with DEVICE=cpu "
        "checks itself this way)",
    )


def pytest_collection_modifyitems(config, items):
    """With `--device cuda` (or `--only-device-tests`), run only the tests that put minillava on the device (those
    that take the `device` fixture, directly or through another fixture): the rest do not depend on it and ran on
    the CPU already."""
    if config.getoption("--device") == "cpu" and not config.getoption("--only-device-tests"):
        return
    selected = [item for item in items if "device" in getattr(item, "fixturenames", ())]
    config.hook.pytest_deselected(items=[item for item in items if item not in selected])
    items[:] = selected


@pytest.fixture(scope="session")
def device(request):
    """The device minillava runs on in the parity tests: "cpu" unless `pytest --device cuda`."""
    return request.config.getoption("--device")


@pytest.fixture(scope="session")
def tiny_checkpoint():
    """tiny_checkpoint(variant="base", layout="fresh", dtype="float32", shard=False) -> folder."""
    return tiny_llava.checkpoint


@pytest.fixture(scope="session")
def hf_model():
    """hf_model(folder) -> LlavaForConditionalGeneration in float32, eval mode (cached per folder)."""
    import torch
    from transformers import LlavaForConditionalGeneration

    torch.set_num_threads(1)
    cache = {}

    def load(folder):
        key = str(folder)
        if key not in cache:
            cache[key] = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
        return cache[key]

    return load
