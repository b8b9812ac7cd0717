"""Shared fixtures: tiny LLaVA checkpoints made by Transformers (tools/make_tiny_llava.py), cached
under .fixtures/ across runs, and the Transformers reference model loaded from the same folder."""

import os
import sys
from pathlib import Path

# One BLAS/OpenMP thread per process: on 2 cores, small torch forwards with 2 threads can be ~20x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import make_tiny_llava  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoint():
    """tiny_checkpoint(variant="base", layout="fresh", dtype="float32", shard=False) -> folder."""
    return make_tiny_llava.checkpoint


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
