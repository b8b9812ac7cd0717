"""minillava.model.layers against torch and Transformers: LayerNorm, Llama's RMSNorm, every activation."""

import numpy as np
import pytest
import torch

from minillava.model import layers

from .helpers import close


def test_layer_norm(rng):
    x = rng.standard_normal((2, 5, 32)).astype(np.float32) * 3 + 1
    w, b = rng.standard_normal(32).astype(np.float32), rng.standard_normal(32).astype(np.float32)
    ref = torch.nn.functional.layer_norm(torch.from_numpy(x), (32,), torch.from_numpy(w), torch.from_numpy(b), 1e-5)
    close(layers.layer_norm(x, w, b, 1e-5), ref)


def test_rms_norm_matches_llama_rms_norm(rng):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    x = rng.standard_normal((2, 5, 32)).astype(np.float32) * 3
    module = LlamaRMSNorm(32, eps=1e-6)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(rng.standard_normal(32).astype(np.float32)))
    close(layers.rms_norm(x, module.weight.detach().numpy(), 1e-6), module(torch.from_numpy(x)))


@pytest.mark.parametrize("name", sorted(layers.ACTIVATIONS))
def test_activations_match_transformers(rng, name):
    from transformers.activations import ACT2FN

    x = (rng.standard_normal(100_000) * 4).astype(np.float32)
    close(layers.activation(name)(x), ACT2FN[name](torch.from_numpy(x)))
