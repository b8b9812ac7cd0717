"""The SigLIP vision tower (Zhai et al. 2023; Transformers' SiglipVisionModel), llava-interleave's eyes.

    pixel_values -> patch embedding (with a bias) -> + positions
                 -> encoder layers (pre-LN attention and MLP, residual) -> selected hidden state(s)

SigLIP is CLIP's vision transformer (clip.py) trained with a sigmoid loss instead of a softmax one, and
built a little differently at the input:

- the patch embedding, still a stride-P convolution, has a bias;
- there is no CLS token: the tokens are the patches alone, each with a learned position embedding;
- there is no LayerNorm before the first layer (CLIP's ``pre_layrnorm``);
- the MLP's activation is the tanh approximation of GELU (``gelu_pytorch_tanh``; the config says so).

The encoder layers are CLIP's, so they are called from clip.py. After the last layer SigLIP has a
``post_layernorm`` and an attention-pooling ``head``: LLaVA uses neither. It reads ``hidden_states`` (llava-
interleave: the last one, ``vision_feature_layer`` -1, all 729 tokens with the strategy "full"), which in
Transformers are the encoder layers' outputs before ``post_layernorm`` (``capture_outputs`` with
``tie_last_hidden_states=False`` in modeling_siglip.py): so the post-LayerNorm is never applied here either.

Shape letters: N = images, C = channels (3), S = image side in pixels, P = patch side,
Np = (S // P)² patches, Dv = vision hidden size.
"""

from __future__ import annotations

from .attention import scaled_dot_product_attention
from .clip import encoder_layer, patch_embed
from .trace import record


def embeddings(params, pixel_values):
    """SiglipVisionEmbeddings: patch embeddings (a convolution with bias), learned positions added, no CLS.

    pixel_values: [N, C, S, S]  ->  [N, Np, Dv]
    """
    patches = patch_embed(
        pixel_values, params["patch_embedding"]["weight"], params["patch_embedding"]["bias"]
    )  # [N, Np, Dv]
    return patches + params["position_embedding"]["weight"].astype(patches.dtype, copy=False)  # + [Np, Dv]


def vision_tower(params, pixel_values, cfg, n_layers, trace=None, attention=scaled_dot_product_attention):
    """Run SigLIP up to encoder layer ``n_layers`` and return every hidden state on the way (``attention``: the
    plain or the tiled attention function, attention.py).

    Returns the list ``hidden_states`` of Transformers' ``output_hidden_states``: hidden_states[0] is the
    embeddings (no LayerNorm before the layers), hidden_states[i] the output of encoder layer i - 1; it has
    ``n_layers + 1`` entries, each [N, Np, Dv].
    """
    x = embeddings(params["embeddings"], pixel_values)  # [N, Np, Dv]
    record(trace, "vision_tower.embeddings", x)
    hidden_states = [x]
    for i in range(n_layers):
        name = f"vision_tower.encoder.layers.{i}"
        x = encoder_layer(params["encoder"]["layers"][i], x, cfg, trace, name, attention)  # [N, Np, Dv]
        record(trace, name, x)
        hidden_states.append(x)
    return hidden_states
