"""The multi-modal projector of LLaVA-1.5 (Liu et al. 2023, "Improved Baselines"; Transformers'
LlavaMultiModalProjector): a two-layer MLP that maps CLIP features into the word-embedding space.

    image_features = linear_2(gelu(linear_1(vision_features)))

Shape letters: N = images, L = image tokens per image, Dv' = vision feature width (Dv times the
number of selected layers), D = language model hidden size.
"""

from __future__ import annotations

from .layers import activation, linear


def multi_modal_projector(params, x, hidden_act="gelu"):
    """x: [N, L, Dv']  ->  [N, L, D]. Biases are present or not as the checkpoint has them."""
    h = linear(x, params["linear_1"]["weight"], params["linear_1"].get("bias"))  # [N, L, D]
    h = activation(hidden_act)(h)  # [N, L, D]
    return linear(h, params["linear_2"]["weight"], params["linear_2"].get("bias"))  # [N, L, D]
