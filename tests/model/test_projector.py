"""minillava.model.projector against Transformers' LlavaMultiModalProjector, with and without biases, for one
feature layer and for two (linear_1 then reads their concatenation)."""

import numpy as np
import pytest
import torch

from minillava.model import projector

from .helpers import close


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"multimodal_projector_bias": False}, {"vision_feature_layer": [-3, -1], "projector_hidden_act": "relu"}],
    ids=["bias", "no-bias", "two-layers"],
)
def test_projector_matches_llava_multi_modal_projector(rng, kwargs):
    from transformers import LlavaConfig
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    vision, text = {"hidden_size": 24, "num_attention_heads": 2}, {"hidden_size": 40, "num_attention_heads": 4}
    config = LlavaConfig(vision_config=vision, text_config=text, **kwargs)
    torch.manual_seed(0)
    module = LlavaMultiModalProjector(config).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
    params = {name: {k: v.detach().numpy() for k, v in part.named_parameters()} for name, part in
              [("linear_1", module.linear_1), ("linear_2", module.linear_2)]}  # fmt: skip
    assert ("bias" in params["linear_1"]) == kwargs.get("multimodal_projector_bias", True)
    x = rng.standard_normal((3, 5, module.linear_1.in_features)).astype(np.float32)
    ours = projector.multi_modal_projector(params, x, config.projector_hidden_act)
    assert ours.shape == (3, 5, 40)
    close(ours, module(torch.from_numpy(x)))
