"""Processor folders for the tokenizer, chat-template and processor tests, written by Transformers
(tests/fixtures/tiny_tokenizer.py) in several forms, and what those tests share to compare minillava's inputs
with Transformers' LlavaProcessor."""

import numpy as np
from PIL import Image

FORMS = {  # folder name -> tiny_tokenizer.write_processor_files arguments
    "llama": {"style": "llama"},
    "metaspace": {"style": "metaspace"},
    "metaspace_decoder": {"style": "metaspace_decoder"},
    "old_files": {"style": "llama", "template_file": "json", "image_processor_file": "preprocessor"},
    "full": {"style": "llama", "strategy": "full", "image_size": 32, "patch_size": 8},
    # llava-interleave's files as published (SigLIP image processor, Qwen byte-level BPE, its chat template), at the
    # tiny model's 30 px in 7 px patches: 16 image tokens, as so400m's 384 px in 14 px patches make 729.
    "qwen2": {"style": "qwen2", "strategy": "full", "image_size": 30, "patch_size": 7},
}


def small_images(n, seed=0):
    """Small RGB images of different sizes and aspect ratios (resized and cropped by the processor)."""
    rng = np.random.default_rng(seed)
    sizes = [(30, 40), (28, 28), (50, 33), (41, 29), (64, 64)]
    return [Image.fromarray(rng.integers(0, 256, (*sizes[i % 5], 3), dtype=np.uint8)) for i in range(n)]


def assert_same_inputs(ours, theirs):
    assert set(ours) == {k for k in theirs if k in ("input_ids", "attention_mask", "pixel_values")}
    for key, value in ours.items():
        reference = np.asarray(theirs[key])
        assert value.dtype == (np.float32 if key == "pixel_values" else np.int64), key
        assert value.shape == reference.shape, key
        np.testing.assert_array_equal(value, reference, err_msg=key)
