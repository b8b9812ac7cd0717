"""The multi-modal projector of LLaVA-1.5 (Liu et al. 2023, "Improved Baselines"; Transformers'
LlavaMultiModalProjector): a two-layer MLP that maps CLIP features into the word-embedding space.

    image_features = linear_2(gelu(linear_1(vision_features)))

Shape letters: N = images, L = image tokens per image, Dv' = vision feature width (Dv times the
number of selected layers), D = language model hidden size.
"""

from __future__ import annotations

from .layers import activation, activation_backward, linear, linear_param_grads


def multi_modal_projector(params, x, hidden_act="gelu"):
    """x: [N, L, Dv']  ->  [N, L, D]. Biases are present or not as the checkpoint has them."""
    h = linear(x, params["linear_1"]["weight"], params["linear_1"].get("bias"))  # [N, L, D]
    h = activation(hidden_act)(h)  # [N, L, D]
    return linear(h, params["linear_2"]["weight"], params["linear_2"].get("bias"))  # [N, L, D]


def multi_modal_projector_backward(dy, params, x, hidden_act="gelu"):
    """The backward of ``multi_modal_projector``: linear_2's, the activation's, linear_1's, in that order.

    dy: [N, L, D], x: [N, L, Dv']  ->  dx [N, L, Dv'], grads {linear_1: {weight[, bias]}, linear_2: {...}}
    """
    h = linear(x, params["linear_1"]["weight"], params["linear_1"].get("bias"))  # [N, L, D]  (recomputed)
    a = activation(hidden_act)(h)  # [N, L, D]
    grads = {}
    da, grads["linear_2"] = linear_param_grads(dy, a, params["linear_2"])  # [N, L, D]
    dh = activation_backward(hidden_act)(da, h)  # [N, L, D]
    dx, grads["linear_1"] = linear_param_grads(dh, x, params["linear_1"])  # [N, L, Dv']
    return dx, grads
