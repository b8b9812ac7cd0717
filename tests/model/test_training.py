"""Training (LlavaModel.loss and loss_and_gradients, model/training.py, model/optim.py) against Transformers and
torch: the loss LlavaForConditionalGeneration returns for the same labels; the gradient of every trainable weight
and of the merged embeddings against torch's autograd on the same checkpoint (float32, a left-padded batch with
images); a float64 finite-difference check of the whole backward on a tiny model; AdamW and the warm-up + cosine
schedule against torch's and Transformers'; the bad inputs."""

import math

import numpy as np
import pytest
import torch

import minillava
from minillava.model import optim, training

from .helpers import BATCH, central_difference, make_inputs, rel_err

LOSS_TOL = 1e-6  # relative
GRAD_TOL = 1e-4  # relative to each gradient's largest magnitude (the bound)


def make_labels(input_ids, attention_mask, config, n_prompt=3):
    """input_ids with -100 where nothing is learnt: padding, image tokens, each row's first n_prompt real tokens."""
    labels = input_ids.copy()
    labels[attention_mask == 0] = -100
    labels[input_ids == config.image_token_index] = -100
    for row in range(labels.shape[0]):
        first = int(np.argmax(attention_mask[row]))
        labels[row, first : first + n_prompt] = -100
    return labels


def torch_loss_and_grads(hf, input_ids, attention_mask, pixel_values, labels):
    """Transformers' loss for labels, the gradient of every weight, and that of the language model's
    inputs_embeds (captured as it enters the language model)."""
    hf.zero_grad(set_to_none=True)
    captured = {}

    def keep_inputs_embeds(module, args, kwargs):
        kwargs["inputs_embeds"].retain_grad()
        captured["inputs_embeds"] = kwargs["inputs_embeds"]

    handle = hf.model.language_model.register_forward_pre_hook(keep_inputs_embeds, with_kwargs=True)
    try:
        out = hf(
            input_ids=torch.from_numpy(input_ids),
            attention_mask=torch.from_numpy(attention_mask),
            pixel_values=None if pixel_values is None else torch.from_numpy(pixel_values),
            labels=torch.from_numpy(labels),
            output_hidden_states=True,  # see helpers.hf_logits
        )
        out.loss.backward()
    finally:
        handle.remove()
    grads = {
        name.removeprefix("model."): p.grad.numpy().copy() for name, p in hf.named_parameters() if p.grad is not None
    }
    return out.loss.item(), grads, captured["inputs_embeds"].grad.numpy().copy()


def flatten(tree, prefix=""):
    """A nested dict/list of arrays -> {"language_model.layers.0.mlp.up_proj.weight": array, ...}"""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in flatten(sub, f"{prefix}{key}.").items()}
    if isinstance(tree, list):
        return {k: v for i, sub in enumerate(tree) for k, v in flatten(sub, f"{prefix}{i}.").items()}
    return {prefix[:-1]: tree}


VARIANTS = ["base", "mha", "biases", "tied", "interleave", "interleave_untied"]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("with_images", [True, False])
def test_loss_equals_transformers(tiny_checkpoint, hf_model, variant, with_images):
    folder = tiny_checkpoint(variant, "hub", "float32", False)
    model, hf = minillava.load_model(folder), hf_model(folder)
    layout = BATCH if with_images else [[9], [4, 2]]
    input_ids, attention_mask, pixel_values = make_inputs(model.config, np.random.default_rng(1), layout)
    labels = make_labels(input_ids, attention_mask, model.config)
    ours = model.loss(input_ids, pixel_values, attention_mask, labels)
    with torch.no_grad():
        theirs = hf(
            input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(attention_mask),
            pixel_values=None if pixel_values is None else torch.from_numpy(pixel_values),
            labels=torch.from_numpy(labels), output_hidden_states=True,
        ).loss.item()  # fmt: skip
    assert isinstance(ours, float)
    assert abs(ours - theirs) <= LOSS_TOL * abs(theirs), (ours, theirs)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients_equal_autograd(tiny_checkpoint, hf_model, variant):
    """Stage 2's gradients (projector, language model, lm_head) and those of the merged embeddings."""
    folder = tiny_checkpoint(variant, "hub", "float32", False)
    model, hf = minillava.load_model(folder), hf_model(folder)
    input_ids, attention_mask, pixel_values = make_inputs(model.config, np.random.default_rng(2), BATCH)
    labels = make_labels(input_ids, attention_mask, model.config)
    loss, grads = model.loss_and_gradients(input_ids, pixel_values, attention_mask, labels, trainable=training.PARTS)
    their_loss, their_grads, their_embeds_grad = torch_loss_and_grads(
        hf, input_ids, attention_mask, pixel_values, labels
    )
    assert abs(loss - their_loss) <= LOSS_TOL * abs(their_loss)
    assert rel_err(grads.pop("inputs_embeds"), their_embeds_grad) <= GRAD_TOL
    ours = flatten(grads)
    expected = {k: v for k, v in their_grads.items() if not k.startswith("vision_tower.")}
    if model.config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)  # the same tensor as the embeddings: its gradient is theirs
    assert sorted(ours) == sorted(expected)
    errors = {name: rel_err(ours[name], expected[name]) for name in ours}
    assert max(errors.values()) <= GRAD_TOL, max(errors.items(), key=lambda kv: kv[1])


def test_stage_one_returns_the_projector_alone(tiny_checkpoint, hf_model):
    folder = tiny_checkpoint("base", "hub", "float32", False)
    model, hf = minillava.load_model(folder), hf_model(folder)
    input_ids, attention_mask, pixel_values = make_inputs(model.config, np.random.default_rng(3), BATCH)
    labels = make_labels(input_ids, attention_mask, model.config)
    _, grads = model.loss_and_gradients(input_ids, pixel_values, attention_mask, labels)
    assert sorted(grads) == ["inputs_embeds", "multi_modal_projector"]
    _, their_grads, _ = torch_loss_and_grads(hf, input_ids, attention_mask, pixel_values, labels)
    for name, ours in flatten(grads["multi_modal_projector"], "multi_modal_projector.").items():
        assert rel_err(ours, their_grads[name]) <= GRAD_TOL, name


def float64_params(tree):
    if isinstance(tree, dict):
        return {k: float64_params(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [float64_params(v) for v in tree]
    return np.array(tree, dtype=np.float64)


def test_finite_differences_in_float64(tiny_checkpoint):
    """The whole backward in float64 against central differences of the loss, weight by weight (a sample of
    coordinates in every kind of weight, and of the vision features' path through the projector)."""
    model = minillava.load_model(tiny_checkpoint("biases", "hub", "float32", False))
    cfg, params = model.config, float64_params(model.params)
    rng = np.random.default_rng(4)
    input_ids, attention_mask, _ = make_inputs(cfg, rng, [[2, "img", 3], [1, "img", 1]])
    labels = make_labels(input_ids, attention_mask, cfg, n_prompt=1)
    L = cfg.num_image_tokens
    features = rng.standard_normal((2, L, params["multi_modal_projector"]["linear_1"]["weight"].shape[1]))

    def loss_at(p):
        logits, _ = training.forward(p, cfg, input_ids, attention_mask, features, model.inv_freq)
        return training.cross_entropy(logits, labels, training.IGNORE_INDEX)

    _, grads = training.loss_and_gradients(params, cfg, input_ids, attention_mask, labels, features,
                                           model.inv_freq, training.PARTS)  # fmt: skip
    ours = flatten(grads)
    flat = flatten(params)
    names = [n for n in ours if n != "inputs_embeds"]
    assert any("q_proj.bias" in n for n in names) and any("layernorm" in n for n in names)
    h = 1e-6
    for name in names:
        weight = flat[name]
        for index in [tuple(rng.integers(0, s) for s in weight.shape) for _ in range(2)]:
            if name.endswith("embed_tokens.weight"):
                index = (int(input_ids[0, -1]), *index[1:])  # a row the batch uses
            numeric = central_difference(lambda _: loss_at(params), weight, index, h)
            assert abs(ours[name][index] - numeric) <= 1e-6 * max(1.0, abs(numeric)) + 1e-9, (name, index)


def test_adamw_equals_torch():
    rng = np.random.default_rng(5)
    weights = {"a": rng.standard_normal((4, 3)).astype(np.float32), "b": [rng.standard_normal(5).astype(np.float32)]}
    theirs = [torch.tensor(w.copy(), requires_grad=True) for w in (weights["a"], weights["b"][0])]
    opt = torch.optim.AdamW(theirs, lr=1e-2, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.1)
    ours = optim.AdamW(betas=(0.9, 0.95), eps=1e-6, weight_decay=0.1)
    for step, lr in enumerate([1e-2, 5e-3, 2e-2]):
        grads = {"a": rng.standard_normal((4, 3)).astype(np.float32), "b": [rng.standard_normal(5).astype(np.float32)]}
        for group in opt.param_groups:
            group["lr"] = lr
        theirs[0].grad, theirs[1].grad = torch.from_numpy(grads["a"]), torch.from_numpy(grads["b"][0])
        opt.step()
        ours.step(weights, grads, lr)
        assert ours.steps == step + 1
        assert rel_err(weights["a"], theirs[0].detach().numpy()) <= 1e-6
        assert rel_err(weights["b"][0], theirs[1].detach().numpy()) <= 1e-6


def test_warmup_cosine_equals_transformers():
    from transformers import get_cosine_schedule_with_warmup

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=3e-3)
    schedule = get_cosine_schedule_with_warmup(opt, num_warmup_steps=12, num_training_steps=400)
    for step in range(400):
        ours = optim.warmup_cosine(step, 400, 3e-3, 12)
        assert math.isclose(ours, opt.param_groups[0]["lr"], rel_tol=1e-12, abs_tol=1e-18), step
        opt.step()
        schedule.step()


def test_a_few_steps_lower_the_loss(tiny_checkpoint):
    """Stage 1 in miniature: AdamW on the projector alone lowers the loss of the batch it sees."""
    model = minillava.load_model(tiny_checkpoint("base", "hub", "float32", False))
    input_ids, attention_mask, pixel_values = make_inputs(model.config, np.random.default_rng(6), BATCH)
    labels = make_labels(input_ids, attention_mask, model.config)
    before = model.loss(input_ids, pixel_values, attention_mask, labels)
    adamw = optim.AdamW(weight_decay=0.0)
    for _ in range(5):
        _, grads = model.loss_and_gradients(input_ids, pixel_values, attention_mask, labels)
        adamw.step(model.params, {"multi_modal_projector": grads["multi_modal_projector"]}, lr=1e-2)
    assert model.loss(input_ids, pixel_values, attention_mask, labels) < 0.9 * before


@pytest.mark.parametrize(
    ("change", "match"),
    [(lambda ids, labels: labels[:, :-1], r"labels must be an integer array of input_ids' shape \[2, \d+\]"),
     (lambda ids, labels: labels.astype(np.float32), "labels must be an integer array"),
     (lambda ids, labels: np.full_like(labels, -100), "no token to learn from"),
     (lambda ids, labels: np.where(labels >= 0, 10**6, labels), r"labels must be token ids in \[0, \d+\)"),
     (lambda ids, labels: None, "labels are needed")],
)  # fmt: skip
def test_bad_labels(tiny_checkpoint, change, match):
    model = minillava.load_model(tiny_checkpoint("base", "hub", "float32", False))
    input_ids, attention_mask, pixel_values = make_inputs(model.config, np.random.default_rng(7), BATCH)
    labels = change(input_ids, make_labels(input_ids, attention_mask, model.config))
    for call in (model.loss, model.loss_and_gradients):
        with pytest.raises(ValueError, match=match):
            call(input_ids, pixel_values, attention_mask, labels)


def test_bad_training_options(tiny_checkpoint):
    model = minillava.load_model(tiny_checkpoint("tied", "hub", "float32", False))
    input_ids, attention_mask, pixel_values = make_inputs(model.config, np.random.default_rng(8), BATCH)
    labels = make_labels(input_ids, attention_mask, model.config)
    for trainable in ((), ("projector",), "multi_modal_projector"):
        with pytest.raises(ValueError, match="trainable must be a non-empty tuple of"):
            model.loss_and_gradients(input_ids, pixel_values, attention_mask, labels, trainable=trainable)
    with pytest.raises(ValueError, match="ties lm_head to the token embeddings"):
        model.loss_and_gradients(input_ids, pixel_values, attention_mask, labels, trainable=("lm_head",))
    for lr in (-1.0, float("nan"), "1e-3"):
        with pytest.raises(ValueError, match="lr must be a finite number"):
            optim.AdamW().step({"w": np.zeros(2)}, {"w": np.ones(2)}, lr)
    for peak in (0.0, -1e-3, float("inf"), "1e-3", True):
        with pytest.raises(ValueError, match="peak_lr must be a positive number"):
            optim.warmup_cosine(0, 10, peak, 1)
    with pytest.raises(ValueError, match="total_steps must be an int >= 1"):
        optim.warmup_cosine(0, 0, 1e-3, 0)
    with pytest.raises(ValueError, match=r"the gradient's shape \[3\] is not the weight's \[2\]"):
        optim.AdamW().step({"w": np.zeros(2)}, {"w": np.ones(3)}, 1e-3)
    quantized = minillava.load_model(tiny_checkpoint("base", "hub", "float32", False), quantize="int8")
    with pytest.raises(ValueError, match="loss_and_gradients needs the weights as float arrays"):
        quantized.loss_and_gradients(input_ids, pixel_values, attention_mask, labels)
    mapped = minillava.load_model(tiny_checkpoint("base", "hub", "float16", False), low_memory=True)
    _, grads = mapped.loss_and_gradients(input_ids, pixel_values, attention_mask, labels)
    with pytest.raises(ValueError, match=r"multi_modal_projector\.linear_\d\.weight is read-only"):
        optim.AdamW().step(mapped.params, {"multi_modal_projector": grads["multi_modal_projector"]}, 1e-3)


def test_clip_grad_norm_equals_torch():
    rng = np.random.default_rng(9)
    for max_norm in (0.5, 100.0):  # clipped, and left alone
        grads = {"a": rng.standard_normal((6, 5)).astype(np.float32), "b": [rng.standard_normal(7).astype(np.float32)]}
        theirs = [torch.tensor(g.copy(), requires_grad=True) for g in (grads["a"], grads["b"][0])]
        for t in theirs:
            t.grad = t.detach().clone()
        their_norm = torch.nn.utils.clip_grad_norm_(theirs, max_norm).item()
        norm = optim.clip_grad_norm(grads, max_norm)
        assert math.isclose(norm, their_norm, rel_tol=1e-6)
        assert rel_err(grads["a"], theirs[0].grad.numpy()) <= 1e-6
        assert rel_err(grads["b"][0], theirs[1].grad.numpy()) <= 1e-6
