"""What the model tests share: inputs built for a config, Transformers' logits on them, and the error measures.

Tolerances (float32): each module's output within 1e-5 of the reference's largest magnitude; logits within
1e-4 of theirs. Logits are compared at real (non-padding) positions: a padding query attends to nothing, and
what a framework puts there is arbitrary.
"""

import numpy as np
import torch

TOL = 1e-5  # a small function against its torch/Transformers piece: max |ours - ref| <= TOL x max |ref|
MODULE_TOL = 1e-5
LOGITS_TOL = 1e-4


def close(ours, ref):
    """ours (float32) equals the torch/NumPy reference within TOL of its largest magnitude."""
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    assert ours.dtype == np.float32
    err = np.max(np.abs(ours.astype(np.float64) - ref)) / np.max(np.abs(ref))
    assert err <= TOL, err


def rel_err(ours, ref):
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def make_inputs(config, rng, layout):
    """input_ids, attention_mask, pixel_values for a left-padded batch.

    layout: a list of rows, each a list of segments: an int n (n random text tokens) or "img".
    Rows are left-padded to the longest with the pad token and attention_mask 0.
    """
    L, img_id = config.num_image_tokens, config.image_token_index
    text_ids = [i for i in range(config.text.vocab_size) if i not in (img_id, config.pad_token_id)]
    rows, n_images = [], 0
    for segments in layout:
        row = [1]  # BOS
        for seg in segments:
            if seg == "img":
                row += [img_id] * L
                n_images += 1
            else:
                row += list(rng.choice(text_ids, size=seg))
        rows.append(row)
    T = max(len(r) for r in rows)
    pad = config.pad_token_id
    input_ids = np.array([[pad] * (T - len(r)) + r for r in rows], dtype=np.int64)
    attention_mask = np.array([[0] * (T - len(r)) + [1] * len(r) for r in rows], dtype=np.int64)
    side = config.vision.image_size
    pixel_values = rng.standard_normal((n_images, 3, side, side)).astype(np.float32) if n_images else None
    return input_ids, attention_mask, pixel_values


def hf_logits(hf, input_ids, attention_mask, pixel_values):
    with torch.no_grad():
        out = hf(
            input_ids=torch.from_numpy(input_ids),
            attention_mask=torch.from_numpy(attention_mask),
            pixel_values=None if pixel_values is None else torch.from_numpy(pixel_values),
            # Transformers 5.24 asks CLIP for the hidden states it selects with
            # `output_hidden_states=vision_feature_layer`, which is falsy for layer 0 (then it crashes);
            # asking for all of them sidesteps that and changes no number.
            output_hidden_states=True,
        )
    return out.logits.numpy()


BATCH = [[3, "img", 5, "img", 2], [4, "img", 6]]  # two images in row 0, one in the shorter row 1


def rel_err_to_transformers(model, hf, seed):
    """The model's logits on a left-padded BATCH (inputs from ``seed``) against Transformers' ``hf`` on the same
    inputs, at the real positions (padding positions are garbage in both, and differ by the attention used)."""
    input_ids, attention_mask, pixel_values = make_inputs(model.config, np.random.default_rng(seed), BATCH)
    ours = model.forward(input_ids, pixel_values=pixel_values, attention_mask=attention_mask)  # [B, T, V]
    ref = hf_logits(hf, input_ids, attention_mask, pixel_values)  # [B, T, V]
    real = attention_mask.astype(bool)  # [B, T]
    return rel_err(ours[real], ref[real])


def greedy_tokens(model, seed, max_new_tokens=24):
    """The model's greedy generation on a left-padded BATCH (inputs from ``seed``), never stopping early: the tokens
    two ways of computing the same model must agree on, token for token.  -> [B, T + max_new_tokens]"""
    input_ids, attention_mask, pixel_values = make_inputs(model.config, np.random.default_rng(seed), BATCH)
    return model.generate(input_ids, pixel_values, attention_mask, max_new_tokens=max_new_tokens, eos_token_id=None)


def central_difference(f, x, index, h=1e-6):
    """(f(x + h e_i) - f(x - h e_i)) / 2h for one entry i = index of the float64 array x, changed in place and
    restored: the numerical derivative a backward's gradient is checked against."""
    saved = x[index]
    x[index] = saved + h
    up = f(x)
    x[index] = saved - h
    down = f(x)
    x[index] = saved
    return (up - down) / (2 * h)


def logits_in_steps(model, input_ids, attention_mask, pixel_values):
    """The logits of a prompt whose last 6 positions are text, run through the model's KV cache as a prefill, a
    4-token step and two one-token steps (the decode shapes): [B, T, V]."""
    B, T = input_ids.shape
    cache = model.new_cache(B, T)
    steps = [(0, T - 6), (T - 6, T - 2), (T - 2, T - 1), (T - 1, T)]  # prefill, 4 tokens, 1, 1
    return np.concatenate(
        [
            model.forward(input_ids[:, a:b], pixel_values=pixel_values if a == 0 else None,
                          attention_mask=attention_mask[:, :b], cache=cache)
            for a, b in steps
        ],
        axis=1,
    )  # fmt: skip
