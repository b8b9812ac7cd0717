"""The hand-written backward functions of minillava.model.layers and the loss of minillava.model.loss.

Two checks for each: against torch autograd on the same computation in float32 (the gradient within TOL = 1e-5
of the reference's largest magnitude, helpers.close), and against central finite differences in float64 on tiny
shapes (relative error <= 1e-6). Where a forward takes statistics in float32 (RMSNorm, LayerNorm) or GELU's
erfc approximation, the finite differences use the float64 formula that the backward differentiates.
The loss against torch's cross_entropy, Transformers' ForCausalLMLoss, and the loss that LlamaForCausalLM and
LlavaForConditionalGeneration return when given labels.
"""

import math

import numpy as np
import pytest
import torch

from minillava.loading.config import load_config
from minillava.model import layers
from minillava.model.blocked import BlockedWeight
from minillava.model.loss import cross_entropy, cross_entropy_backward, shift_labels
from minillava.model.quantize import quantize_int8

from .helpers import BATCH, central_difference, close, make_inputs, rel_err

torch.set_num_threads(1)

FD_TOL = 1e-6  # float64 central differences against the backward: max |ours - numeric| <= FD_TOL x max |numeric|
SHAPE = (2, 5, 48)  # [B, T, D], a batch as the model sees it
TINY = (1, 3, 4)  # for finite differences: one forward per perturbed entry


def numeric_grad(f, x, h=1e-6):
    """Central differences of the scalar f at x (float64): (f(x + h e_i) - f(x - h e_i)) / 2h for each entry i."""
    x = x.copy()
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        grad[i] = central_difference(f, x, i, h)
    return grad


def fd_close(ours, numeric):
    assert ours.dtype == np.float64
    err = rel_err(ours, numeric)
    assert err <= FD_TOL, err


def t(a, grad=True):
    """A torch leaf tensor holding a copy of a (gradients asked for by default)."""
    return torch.tensor(a, requires_grad=grad)


def float32(rng, shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# linear
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("x_shape", [SHAPE, (7, 48)], ids=["3d", "2d"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
def test_linear_backward_matches_autograd(rng, x_shape, with_bias):
    x, w, dy = float32(rng, x_shape), float32(rng, (32, 48)), float32(rng, (*x_shape[:-1], 32))
    b = float32(rng, 32) if with_bias else None
    tx, tw, tb = t(x), t(w), (t(b) if with_bias else None)
    torch.nn.functional.linear(tx, tw, tb).backward(torch.from_numpy(dy))
    dx, dw, db = layers.linear_backward(dy, x, w, b)
    close(dx, tx.grad)
    close(dw, tw.grad)
    if with_bias:
        close(db, tb.grad)
    else:
        assert db is None


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
def test_linear_backward_finite_differences(rng, with_bias):
    x, w, dy = rng.standard_normal(TINY), rng.standard_normal((3, 4)), rng.standard_normal((*TINY[:-1], 3))
    b = rng.standard_normal(3) if with_bias else None
    dx, dw, db = layers.linear_backward(dy, x, w, b)
    fd_close(dx, numeric_grad(lambda v: np.sum(dy * layers.linear(v, w, b)), x))
    fd_close(dw, numeric_grad(lambda v: np.sum(dy * layers.linear(x, v, b)), w))
    if with_bias:
        fd_close(db, numeric_grad(lambda v: np.sum(dy * layers.linear(x, w, v)), b))


def test_linear_backward_refuses_weights_at_rest(rng):
    w = float32(rng, (8, 64))
    x, dy = float32(rng, (3, 64)), float32(rng, (3, 8))
    for weight in (quantize_int8(w), BlockedWeight(w)):
        with pytest.raises(TypeError, match="plain float array"):
            layers.linear_backward(dy, x, weight)


# ---------------------------------------------------------------------------------------------
# RMSNorm and LayerNorm
# ---------------------------------------------------------------------------------------------


def test_rms_norm_backward_matches_llama_rms_norm(rng):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    x, dy = float32(rng, SHAPE, 3), float32(rng, SHAPE)
    module = LlamaRMSNorm(SHAPE[-1], eps=1e-6)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(float32(rng, SHAPE[-1])))
    tx = t(x)
    module(tx).backward(torch.from_numpy(dy))
    dx, dw = layers.rms_norm_backward(dy, x, module.weight.detach().numpy(), 1e-6)
    close(dx, tx.grad)
    close(dw, module.weight.grad)


def test_rms_norm_backward_finite_differences(rng):
    x, w, dy = rng.standard_normal(TINY), rng.standard_normal(TINY[-1]), rng.standard_normal(TINY)
    eps = 1e-6

    def rms_norm64(v, weight):  # the forward's formula, kept in float64 (the forward takes it to float32)
        return weight * v / np.sqrt((v * v).mean(axis=-1, keepdims=True) + eps)

    dx, dw = layers.rms_norm_backward(dy, x, w, eps)
    fd_close(dx, numeric_grad(lambda v: np.sum(dy * rms_norm64(v, w)), x))
    fd_close(dw, numeric_grad(lambda v: np.sum(dy * rms_norm64(x, v)), w))


def test_layer_norm_backward_matches_autograd(rng):
    x, dy = float32(rng, SHAPE, 3) + 1, float32(rng, SHAPE)
    w, b = float32(rng, SHAPE[-1]), float32(rng, SHAPE[-1])
    tx, tw, tb = t(x), t(w), t(b)
    torch.nn.functional.layer_norm(tx, SHAPE[-1:], tw, tb, 1e-5).backward(torch.from_numpy(dy))
    dx, dw, db = layers.layer_norm_backward(dy, x, w, b, 1e-5)
    close(dx, tx.grad)
    close(dw, tw.grad)
    close(db, tb.grad)


def test_layer_norm_backward_finite_differences(rng):
    x, dy = rng.standard_normal(TINY), rng.standard_normal(TINY)
    w, b = rng.standard_normal(TINY[-1]), rng.standard_normal(TINY[-1])
    eps = 1e-5

    def layer_norm64(v, weight, bias):  # the forward's formula, kept in float64
        centered = v - v.mean(axis=-1, keepdims=True)
        return centered / np.sqrt((centered * centered).mean(axis=-1, keepdims=True) + eps) * weight + bias

    dx, dw, db = layers.layer_norm_backward(dy, x, w, b, eps)
    fd_close(dx, numeric_grad(lambda v: np.sum(dy * layer_norm64(v, w, b)), x))
    fd_close(dw, numeric_grad(lambda v: np.sum(dy * layer_norm64(x, v, b)), w))
    fd_close(db, numeric_grad(lambda v: np.sum(dy * layer_norm64(x, w, v)), b))


# ---------------------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------------------


def gelu64(x):
    """Exact GELU in float64, x Phi(x) with math.erf: the function gelu_backward differentiates (the forward's
    erfc is a fit within 1.2e-7)."""
    return x * 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


@pytest.mark.parametrize("name", sorted(layers.ACTIVATIONS))
def test_activation_backward_matches_autograd(rng, name):
    from transformers.activations import ACT2FN

    x, dy = float32(rng, SHAPE, 3), float32(rng, SHAPE)
    x[0, 0, :3] = (-40.0, 0.0, 40.0)  # the saturated tails, and relu's kink (torch: gradient 0 at 0)
    tx = t(x)
    ACT2FN[name](tx).backward(torch.from_numpy(dy))
    close(layers.activation_backward(name)(dy, x), tx.grad)


@pytest.mark.parametrize("name", sorted(layers.ACTIVATIONS))
def test_activation_backward_finite_differences(rng, name):
    x, dy = rng.standard_normal(TINY) * 3, rng.standard_normal(TINY)
    x[np.abs(x) < 1e-3] = 0.5  # no entry within a step of relu's kink
    forward = gelu64 if name == "gelu" else layers.activation(name)
    dx = layers.activation_backward(name)(dy, x)
    fd_close(dx, numeric_grad(lambda v: np.sum(dy * forward(v)), x))


def test_activation_backward_names():
    for name in layers.ACTIVATIONS:  # every name has a backward, and the two names of the tanh GELU share one
        assert callable(layers.activation_backward(name))
    assert layers.activation_backward("gelu_new") is layers.activation_backward("gelu_pytorch_tanh")
    with pytest.raises(ValueError, match="unsupported activation 'swiglu'; minillava knows") as ours:
        layers.activation_backward("swiglu")
    with pytest.raises(ValueError) as forward:
        layers.activation("swiglu")
    assert str(ours.value) == str(forward.value)


def test_backwards_leave_their_inputs_as_they_were(rng):
    """Some forwards work in place in arrays of their own: the backwards that call them must not touch x or dy."""
    x, dy, w, b = float32(rng, SHAPE, 3), float32(rng, SHAPE), float32(rng, SHAPE[-1]), float32(rng, SHAPE[-1])
    saved = [a.copy() for a in (x, dy, w, b)]
    for name in layers.ACTIVATIONS:
        layers.activation_backward(name)(dy, x)
    layers.rms_norm_backward(dy, x, w, 1e-6)
    layers.layer_norm_backward(dy, x, w, b, 1e-5)
    layers.linear_backward(dy, x, float32(rng, (48, 48)), b)
    for before, after in zip(saved, (x, dy, w, b), strict=True):
        assert np.array_equal(before, after)


# ---------------------------------------------------------------------------------------------
# Cross-entropy
# ---------------------------------------------------------------------------------------------


def padded_labels(rng, B, T, V, prompt):
    """Labels [B, T] as in instruction tuning: -100 on the left padding and the prompt, tokens after it.
    prompt: per row, how many leading positions are ignored (padding + prompt)."""
    labels = rng.integers(0, V, size=(B, T))
    for row, n in enumerate(prompt):
        labels[row, :n] = -100
    return labels


def torch_causal_loss(logits, labels):
    """The reference, written out: logits at t predict labels at t + 1, ignore_index -100, mean over the rest."""
    V = logits.shape[-1]
    shifted = torch.from_numpy(labels[:, 1:]).reshape(-1)
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), shifted, ignore_index=-100)


def test_shift_labels():
    labels = np.array([[-100, 5, 6, 7], [-100, -100, -100, 2]])
    assert np.array_equal(shift_labels(labels), [[5, 6, 7, -100], [-100, -100, 2, -100]])


@pytest.mark.parametrize("prompt", [(0, 0), (3, 6), (9, 2)], ids=["all-labelled", "left-padded", "one-counted"])
def test_cross_entropy_matches_torch(rng, prompt):
    from transformers.loss.loss_utils import ForCausalLMLoss

    B, T, V = 2, 10, 37
    logits, labels = float32(rng, (B, T, V), 4), padded_labels(rng, B, T, V, prompt)
    tl = t(logits)
    ref = torch_causal_loss(tl, labels)
    ref.backward()
    hf = ForCausalLMLoss(torch.from_numpy(logits), torch.from_numpy(labels), vocab_size=V)
    ours = cross_entropy(logits, labels)
    assert isinstance(ours, float)
    assert abs(ours - ref.item()) <= 1e-6 * abs(ref.item())
    assert abs(ours - hf.item()) <= 1e-6 * abs(hf.item())
    dlogits = cross_entropy_backward(logits, labels)
    close(dlogits, tl.grad)
    assert not dlogits[:, -1].any()  # the last position predicts nothing


def test_cross_entropy_backward_is_zero_where_nothing_counts(rng):
    B, T, V = 2, 6, 11
    logits, labels = float32(rng, (B, T, V)), padded_labels(rng, B, T, V, (2, 4))
    dlogits = cross_entropy_backward(logits, labels)
    counted = shift_labels(labels) != -100  # [B, T]
    assert dlogits.dtype == np.float32
    assert not dlogits[~counted].any()
    # at a counted position the row sums to zero (softmax and one-hot both sum to 1) and has one negative entry
    assert np.allclose(dlogits[counted].sum(axis=-1), 0, atol=1e-7)
    assert np.array_equal((dlogits[counted] < 0).sum(axis=-1), np.ones(counted.sum()))


def test_cross_entropy_one_counted_position(rng):
    """Only labels[0, 2] counts: the loss is -log softmax(logits[0, 1])[labels[0, 2]], and its gradient there alone."""
    logits = float32(rng, (2, 4, 9), 2)
    labels = np.full((2, 4), -100)
    labels[0, 2] = 5
    labels[1, 0] = 3  # a label at position 0 is nobody's target: it never counts
    expected = -torch.log_softmax(torch.from_numpy(logits[0, 1]), dim=-1)[5].item()
    assert abs(cross_entropy(logits, labels) - expected) <= 1e-6 * expected
    dlogits = cross_entropy_backward(logits, labels)
    one_hot = np.eye(9, dtype=np.float32)[5]
    close(dlogits[0, 1], torch.softmax(torch.from_numpy(logits[0, 1]), dim=-1).numpy() - one_hot)
    dlogits[0, 1] = 0
    assert not dlogits.any()


@pytest.mark.parametrize(
    "labels",
    [np.full((2, 5), -100), np.array([[4, -100, -100, -100, -100], [1, -100, -100, -100, -100]])],
    ids=["all-ignored", "only-position-0"],
)
def test_cross_entropy_refuses_labels_with_nothing_to_learn(rng, labels):
    logits = float32(rng, (2, 5, 7))
    message = r"labels: every position is ignore_index \(-100\): no token to learn from"
    with pytest.raises(ValueError, match=message):
        cross_entropy(logits, labels)
    with pytest.raises(ValueError, match=message):
        cross_entropy_backward(logits, labels)


def test_cross_entropy_is_stable_for_large_logits(rng):
    B, T, V = 2, 5, 13
    logits, labels = float32(rng, (B, T, V), 1e4), padded_labels(rng, B, T, V, (1, 2))  # exp would overflow
    tl = t(logits)
    ref = torch_causal_loss(tl, labels)
    ref.backward()
    ours = cross_entropy(logits, labels)
    assert np.isfinite(ours) and abs(ours - ref.item()) <= 1e-6 * abs(ref.item())
    close(cross_entropy_backward(logits, labels), tl.grad)


def test_cross_entropy_upcasts_float16_and_keeps_float64(rng):
    B, T, V = 2, 5, 13
    logits, labels = float32(rng, (B, T, V), 3), padded_labels(rng, B, T, V, (1, 2))
    half = logits.astype(np.float16)
    ref = torch_causal_loss(torch.from_numpy(half).float(), labels).item()  # ForCausalLMLoss's .float()
    assert abs(cross_entropy(half, labels) - ref) <= 1e-6 * ref
    assert cross_entropy_backward(half, labels).dtype == np.float16
    assert cross_entropy_backward(logits.astype(np.float64), labels).dtype == np.float64


def test_cross_entropy_backward_finite_differences(rng):
    B, T, V = 2, 3, 4
    logits = rng.standard_normal((B, T, V)) * 2
    labels = np.array([[-100, 1, 3], [-100, -100, 0]])
    numeric = numeric_grad(lambda v: cross_entropy(v, labels), logits)
    fd_close(cross_entropy_backward(logits, labels), numeric)


def test_cross_entropy_matches_llama_for_causal_lm(rng):
    """A tiny LlamaForCausalLM given labels (left-padded batch, prompt ignored): its loss from its own logits."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(config).eval()
    B, T = 2, 12
    input_ids = rng.integers(1, 50, size=(B, T))
    attention_mask = np.ones((B, T), dtype=np.int64)
    input_ids[1, :4], attention_mask[1, :4] = 0, 0  # row 1 left-padded by 4
    labels = input_ids.copy()
    labels[0, :5] = -100  # row 0: a prompt of 5 tokens
    labels[1, :7] = -100  # row 1: padding and a prompt of 3
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(input_ids),
            attention_mask=torch.from_numpy(attention_mask),
            labels=torch.from_numpy(labels),
        )
    ours = cross_entropy(out.logits.numpy(), labels)
    assert abs(ours - out.loss.item()) <= 1e-6 * out.loss.item()


def test_cross_entropy_matches_llava_for_conditional_generation(tiny_checkpoint, hf_model):
    """The tiny LLaVA checkpoint of the other tests, given labels: image tokens and prompt ignored."""
    folder = tiny_checkpoint("base", "fresh", "float32", False)
    hf, config = hf_model(folder), load_config(folder)
    input_ids, attention_mask, pixel_values = make_inputs(config, np.random.default_rng(3), BATCH)
    labels = np.where(attention_mask == 1, input_ids, -100)  # [B, T], the padding ignored
    labels[input_ids == config.image_token_index] = -100  # and the image tokens
    labels[:, : input_ids.shape[1] // 2] = -100  # the first half is the prompt
    with torch.no_grad():
        out = hf(
            input_ids=torch.from_numpy(input_ids),
            attention_mask=torch.from_numpy(attention_mask),
            pixel_values=torch.from_numpy(pixel_values),
            labels=torch.from_numpy(labels),
            output_hidden_states=True,  # see helpers.hf_logits
        )
    ours = cross_entropy(out.logits.numpy(), labels)
    assert abs(ours - out.loss.item()) <= 1e-6 * out.loss.item()
