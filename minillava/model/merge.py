"""Putting the image into the sentence: image features replace the ``<image>`` token embeddings.

The processor expands each ``<image>`` in the prompt to as many image tokens as the vision tower
gives features (576 for llava-1.5). Here the embeddings at those positions are overwritten by the
projected image features, in reading order: the first image's features fill the first image-token
positions of the first sequence, and so on, batch row by batch row (Transformers' masked_scatter).

Shape letters: B = batch, T = sequence length, D = hidden size, N = images, L = tokens per image.
"""

from __future__ import annotations

from .backend import xp_of


def merge_image_features(inputs_embeds, input_ids, image_features, image_token_index):
    """inputs_embeds: [B, T, D], input_ids: [B, T], image_features: [N, L, D]  ->  [B, T, D]

    input_ids must hold exactly N * L image tokens (the model's entry points check this)."""
    xp = xp_of(inputs_embeds)
    is_image = input_ids == image_token_index  # [B, T]
    N, L, D = image_features.shape
    merged = inputs_embeds.copy()  # [B, T, D]
    # Boolean indexing walks [B, T] in row-major order: batch row by batch row, left to right.
    merged[is_image] = image_features.reshape(N * L, D).astype(merged.dtype, copy=False)
    return xp.ascontiguousarray(merged)


def merge_image_features_backward(dmerged, input_ids, image_features_shape, image_token_index):
    """The backward of ``merge_image_features``: each position's gradient goes back where its value came from,
    the image-token positions' to the image features (in the same reading order), the others' to the token
    embeddings; the embeddings the image features overwrote get none.

    dmerged: [B, T, D], input_ids: [B, T], image_features_shape: (N, L, D)
    -> d inputs_embeds [B, T, D], d image_features [N, L, D]
    """
    xp = xp_of(dmerged)
    is_image = input_ids == image_token_index  # [B, T]
    dimage = dmerged[is_image].reshape(image_features_shape)  # [N, L, D]
    dembeds = xp.where(is_image[..., None], 0, dmerged).astype(dmerged.dtype, copy=False)  # [B, T, D]
    return dembeds, dimage
