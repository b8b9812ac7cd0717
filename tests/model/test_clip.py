"""minillava.model.clip against torch's strided convolution and Transformers' CLIPVisionEmbeddings, on the same
random input (the tower's layers are compared with Transformers' in test_llava.py)."""

import numpy as np
import torch

from minillava.model import clip

from .helpers import close


def test_patch_embed_equals_the_strided_convolution(rng):
    pixel_values = rng.standard_normal((2, 3, 42, 42)).astype(np.float32)
    weight = rng.standard_normal((16, 3, 14, 14)).astype(np.float32)
    ref = torch.nn.functional.conv2d(torch.from_numpy(pixel_values), torch.from_numpy(weight), stride=14)
    ref = ref.flatten(2).transpose(1, 2)  # [N, Np, Dv], patches row by row
    close(clip.patch_embed(pixel_values, weight), ref)


def test_clip_embeddings_match_clip_vision_embeddings(rng):
    from transformers import CLIPVisionConfig
    from transformers.models.clip.modeling_clip import CLIPVisionEmbeddings

    torch.manual_seed(0)
    module = CLIPVisionEmbeddings(CLIPVisionConfig(hidden_size=24, image_size=28, patch_size=7)).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
    params = {
        "patch_embedding": {"weight": module.patch_embedding.weight.detach().numpy()},
        "class_embedding": module.class_embedding.detach().numpy(),
        "position_embedding": {"weight": module.position_embedding.weight.detach().numpy()},
    }
    pixel_values = rng.standard_normal((3, 3, 28, 28)).astype(np.float32)
    close(clip.embeddings(params, pixel_values), module(torch.from_numpy(pixel_values)))
