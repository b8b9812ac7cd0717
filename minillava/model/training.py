"""Training LLaVA: the loss and the gradients of its trainable parts (Liu et al. 2023, "Visual Instruction Tuning").

    vision_features ─ projector ─┐                                            labels
    input_ids ─ embed_tokens ──── merge ─ inputs_embeds ─ language model ─ lm_head ─ logits ─ cross-entropy ─ loss

The vision tower stays frozen in both of LLaVA's stages, so its output (``vision_features``, the selected CLIP or
SigLIP layer) is where the gradients stop: the same features serve every step a picture is seen in. Stage 1
trains the projector alone (the language model frozen, its gradients still flow through it to the projector);
stage 2 the projector and the language model. The forward is the inference forward without a cache
(``llama.language_model_with_inputs`` keeps each decoder layer's input for the backward); the backward runs the
same steps in reverse, each module's backward function beside its forward (layers.py, attention.py, rope.py,
llama.py, merge.py, projector.py, loss.py).

``PARTS`` names what can be trained: the keys of ``params`` whose gradients ``loss_and_gradients`` returns.

Shape letters: B = batch, T = positions, D = hidden size, V = vocab, N = images, L = image tokens per image,
Dv' = the vision features' width.
"""

from __future__ import annotations

from .backend import xp_of
from .layers import linear_param_grads
from .llama import embed_tokens, embed_tokens_backward, language_model_backward, language_model_with_inputs, lm_head
from .loss import cross_entropy, cross_entropy_backward
from .merge import merge_image_features, merge_image_features_backward
from .projector import multi_modal_projector, multi_modal_projector_backward

PARTS = ("multi_modal_projector", "language_model", "lm_head")
IGNORE_INDEX = -100  # labels that do not count (Transformers' CrossEntropyLoss default; LLaVA's IGNORE_INDEX)


def forward(params, cfg, input_ids, attention_mask, vision_features, inv_freq):
    """The logits, and what the backward needs.

    input_ids, attention_mask: [B, T]; vision_features: [N, L, Dv'] or None; inv_freq: [hd/2]
    -> logits [B, T, V], saved (a dict)
    """
    xp = xp_of(input_ids)
    B, T = input_ids.shape
    embeds = embed_tokens(params["language_model"]["embed_tokens"]["weight"], input_ids)  # [B, T, D]
    image_features = None
    if vision_features is not None:
        image_features = multi_modal_projector(
            params["multi_modal_projector"], vision_features, cfg.projector_hidden_act
        )  # [N, L, D]
        embeds = merge_image_features(embeds, input_ids, image_features, cfg.image_token_index)  # [B, T, D]
    position_ids = xp.broadcast_to(xp.arange(T), (B, T))  # [B, T], as the inference forward's default
    hidden, lm_saved = language_model_with_inputs(
        params["language_model"], embeds, attention_mask, position_ids, inv_freq, cfg.text
    )  # [B, T, D]
    logits = lm_head(params["lm_head"]["weight"], hidden)  # [B, T, V]
    saved = {"inputs_embeds": embeds, "hidden": hidden, "language_model": lm_saved,
             "image_features_shape": None if image_features is None else image_features.shape}  # fmt: skip
    return logits, saved


def loss_and_gradients(params, cfg, input_ids, attention_mask, labels, vision_features, inv_freq, trainable):
    """The mean cross-entropy of the labelled positions and its gradients.

    input_ids, attention_mask, labels: [B, T] (labels: the token to learn at each position, IGNORE_INDEX where
    none; position t's logits are scored against labels[t + 1], as Transformers does); vision_features:
    [N, L, Dv'] or None; trainable: the PARTS to return gradients for.
    -> (loss: float, grads: a dict with one entry per trainable part, shaped as ``params[part]``, and
    "inputs_embeds": the gradient of the merged embeddings [B, T, D], what torch's ``inputs_embeds.grad`` holds)
    """
    logits, saved = forward(params, cfg, input_ids, attention_mask, vision_features, inv_freq)  # [B, T, V]
    loss = cross_entropy(logits, labels, IGNORE_INDEX)
    dlogits = cross_entropy_backward(logits, labels, IGNORE_INDEX)  # [B, T, V]
    del logits
    grads = {}
    train_lm = "language_model" in trainable
    train_head = "lm_head" in trainable or (train_lm and cfg.tie_word_embeddings)
    dhidden, head_grads = linear_param_grads(dlogits, saved["hidden"], params["lm_head"], train_head)  # [B, T, D]
    dembeds, lm_grads = language_model_backward(
        dhidden, params["language_model"], saved["language_model"], cfg.text, weight_grads=train_lm
    )  # [B, T, D]
    grads["inputs_embeds"] = dembeds
    if saved["image_features_shape"] is not None:
        dembeds, dimage = merge_image_features_backward(
            dembeds, input_ids, saved["image_features_shape"], cfg.image_token_index
        )  # [B, T, D], [N, L, D]
        if "multi_modal_projector" in trainable:
            _, grads["multi_modal_projector"] = multi_modal_projector_backward(
                dimage, params["multi_modal_projector"], vision_features, cfg.projector_hidden_act
            )
    if train_lm:
        d_embedding = embed_tokens_backward(dembeds, params["language_model"]["embed_tokens"]["weight"], input_ids)
        if cfg.tie_word_embeddings:  # lm_head's matrix is the embedding matrix: its two uses add up
            d_embedding = d_embedding + head_grads["weight"]
        grads["language_model"] = {**lm_grads, "embed_tokens": {"weight": d_embedding}}
    if "lm_head" in trainable and not cfg.tie_word_embeddings:
        grads["lm_head"] = head_grads
    return loss, grads
