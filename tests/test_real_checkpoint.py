"""The real checkpoints: their published configs resolve to the real models, and, when the environment points
to a downloaded copy, minillava's outputs equal Transformers' on it.

- llava-1.5-7b-hf (MINILLAVA_LLAVA_7B=/path/to/llava-1.5-7b-hf): the 14 GB folder and about 45 GB of RAM
  (Transformers holds the model in float32, 28 GB; minillava keeps its float16 weights memory-mapped).
- llava-interleave-qwen-0.5b-hf (MINILLAVA_LLAVA_INTERLEAVE=/path/to/llava-interleave-qwen-0.5b-hf): the 1.7 GB
  folder and about 8 GB of RAM (each side holds the 864 million parameters in float32, 3.5 GB).
"""

import os
from pathlib import Path

import numpy as np
import pytest

import minillava
from minillava.loading.weights import expected_shapes

DATA = Path(__file__).parent / "data" / "llava-1.5-7b-hf"
REAL_7B = os.environ.get("MINILLAVA_LLAVA_7B")
REAL_INTERLEAVE = os.environ.get("MINILLAVA_LLAVA_INTERLEAVE")
INTERLEAVE_DATA = Path(__file__).parent / "data" / "llava-interleave-qwen-0.5b-hf"


def test_published_config_has_the_real_parameter_count():
    """Every tensor the 7B checkpoint holds, derived from its config.json alone: 7,063,427,072 parameters
    in 686 tensors (the published model card's count), so the config resolution and the weight layout agree
    with the real folder."""
    shapes = expected_shapes(minillava.load_config(DATA))
    assert len(shapes) == 686
    assert sum(int(np.prod(s)) for s in shapes.values()) == 7_063_427_072
    assert shapes["language_model.embed_tokens.weight"] == (32064, 4096)
    assert shapes["multi_modal_projector.linear_1.weight"] == (4096, 1024)
    assert shapes["vision_tower.embeddings.position_embedding.weight"] == (577, 1024)


@pytest.mark.skipif(
    not REAL_7B,
    reason="set MINILLAVA_LLAVA_7B to a downloaded llava-hf/llava-1.5-7b-hf folder to run the real-model check",
)
def test_real_llava_1_5_7b_logits_match_transformers():
    import torch
    from transformers import LlavaForConditionalGeneration

    folder = Path(REAL_7B)
    model = minillava.load_model(folder, low_memory=True)
    cfg = model.config
    assert (cfg.text.hidden_size, cfg.text.num_hidden_layers, cfg.num_image_tokens) == (4096, 32, 576)

    rng = np.random.default_rng(0)
    pixel_values = rng.uniform(-1.8, 2.1, size=(1, 3, 336, 336)).astype(np.float32)
    # The llava-1.5 prompt, tokenized with the folder's own tokenizer, <image> expanded to 576 tokens.
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ids = tokenizer.encode("USER: <image>\nWhat is shown? ASSISTANT:").ids
    assert ids.count(cfg.image_token_index) == 1
    at = ids.index(cfg.image_token_index)
    prompt = ids[:at] + [cfg.image_token_index] * cfg.num_image_tokens + ids[at + 1 :]
    input_ids = np.array([prompt], dtype=np.int64)
    ours = model.forward(input_ids, pixel_values=pixel_values)
    del model

    hf = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(input_ids), pixel_values=torch.from_numpy(pixel_values)).logits.numpy()
    err = np.max(np.abs(ours - ref)) / np.max(np.abs(ref))
    assert err <= 1e-4, err
    assert ours[0, -1].argmax() == ref[0, -1].argmax(), "greedy next token differs"


@pytest.mark.skipif(
    not REAL_INTERLEAVE,
    reason="set MINILLAVA_LLAVA_INTERLEAVE to a downloaded llava-hf/llava-interleave-qwen-0.5b-hf folder to run it",
)
def test_real_llava_interleave_0_5b_matches_transformers():
    """The folder's small files are the ones checked in as test data; then as below, on the real weights."""
    import json

    folder = Path(REAL_INTERLEAVE)
    for name in ("config.json", "preprocessor_config.json", "processor_config.json", "chat_template.json"):
        assert json.loads((folder / name).read_text()) == json.loads((INTERLEAVE_DATA / name).read_text()), name
    assert_matches_transformers(folder)


def test_the_interleave_check_runs_on_a_stand_in(tiny_checkpoint):
    """The opt-in check above, on the tiny interleave checkpoint (the same files, random weights): so that its
    code cannot rot unnoticed while nobody has the weights at hand."""
    assert_matches_transformers(tiny_checkpoint("interleave_chat", "hub", "bfloat16", False))


def assert_matches_transformers(folder: Path) -> None:
    """The processor's outputs, the logits and 24 greedy tokens equal Transformers' on a photo with the folder's
    own chat template."""
    import torch
    from PIL import Image
    from skimage import data
    from transformers import AutoImageProcessor, LlavaForConditionalGeneration, LlavaProcessor

    model, processor = minillava.load_model(folder), minillava.load_processor(folder)
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    photo = Image.fromarray(data.chelsea())
    inputs = processor(images=[photo], text=[prompt])
    theirs_processor = LlavaProcessor.from_pretrained(
        folder, image_processor=AutoImageProcessor.from_pretrained(folder, backend="pil")
    )
    assert theirs_processor.apply_chat_template(conversation, add_generation_prompt=True) == prompt
    theirs = theirs_processor(images=[photo], text=[prompt], return_tensors="np")
    np.testing.assert_array_equal(inputs["input_ids"], theirs["input_ids"])
    np.testing.assert_array_equal(inputs["pixel_values"], theirs["pixel_values"])

    ours = model.forward(**inputs)
    ids = model.generate(**inputs, max_new_tokens=24)
    hf = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    pt = {name: torch.from_numpy(value) for name, value in inputs.items()}
    with torch.no_grad():
        ref = hf(**pt).logits.numpy()
        ref_ids = hf.generate(**pt, max_new_tokens=24, do_sample=False).numpy()
    err = np.max(np.abs(ours - ref)) / np.max(np.abs(ref))
    assert err <= 1e-4, err
    np.testing.assert_array_equal(ids, ref_ids)
