"""minillava.model.merge against torch's masked_scatter, which Transformers' LLaVA merges image features with."""

import numpy as np
import torch

from minillava.model import merge


def test_merge_fills_image_positions_in_reading_order_like_masked_scatter(rng):
    B, T, D, L, img = 2, 9, 4, 2, 99
    input_ids = rng.integers(0, 50, size=(B, T))
    input_ids[0, [1, 2, 6, 7]] = img  # two images in row 0
    input_ids[1, [3, 4]] = img  # one in row 1
    embeds = rng.standard_normal((B, T, D)).astype(np.float32)
    features = rng.standard_normal((3, L, D)).astype(np.float32)
    mask = torch.from_numpy(input_ids == img)[..., None].expand(B, T, D)
    ref = torch.from_numpy(embeds).masked_scatter(mask, torch.from_numpy(features))
    ours = merge.merge_image_features(embeds, input_ids, features, img)
    np.testing.assert_array_equal(ours, ref.numpy())
    assert not np.shares_memory(ours, embeds)
