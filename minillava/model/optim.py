"""AdamW and the learning-rate schedule LLaVA trains with (warm-up, then a cosine decay).

AdamW (Loshchilov & Hutter 2019) is Adam (Kingma & Ba 2015) with the weight decay taken out of the gradient:
each step first shrinks the weights, w ← w (1 − lr λ), then moves them along the bias-corrected first moment
divided by the root of the second:

    m ← β1 m + (1 − β1) g          v ← β2 v + (1 − β2) g²          (running means of g and g²)
    w ← w − lr / (1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε)            (t: the step, from 1)

in the order of ``torch.optim.AdamW`` (its single-tensor loop, which writes the first moment as a
``lerp``: m + (1 − β1)(g − m)). ``AdamW`` holds the
optimizer's state (the two moments of every trained array and the step), which is data, like the KV cache; the
update itself is the function ``adamw_update``. LLaVA's recipe: lr 1e-3 for stage 1 (projector) and 2e-5 for
stage 2, warm-up over the first 3% of the steps, then cosine to zero (``warmup_cosine``), no weight decay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .backend import xp_of


def warmup_cosine(step: int, total_steps: int, peak_lr: float, warmup_steps: int) -> float:
    """The learning rate of step ``step`` (0-based): linear from 0 to ``peak_lr`` over ``warmup_steps``, then
    half a cosine down to 0 at ``total_steps`` (Transformers' get_cosine_schedule_with_warmup, which LLaVA's
    scripts use with warmup_ratio 0.03)."""
    number = isinstance(peak_lr, (int, float)) and not isinstance(peak_lr, bool)
    if not (number and math.isfinite(peak_lr) and peak_lr > 0):
        raise ValueError(f"peak_lr must be a positive number, got {peak_lr!r}")
    if not (isinstance(total_steps, int) and total_steps >= 1 and isinstance(warmup_steps, int) and warmup_steps >= 0):
        raise ValueError(f"total_steps must be an int >= 1 and warmup_steps an int >= 0, got {total_steps!r}, "
                         f"{warmup_steps!r}")  # fmt: skip
    if step < warmup_steps:
        return peak_lr * step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak_lr * max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def adamw_update(weight, grad, m, v, step: int, lr: float, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
    """One AdamW step for one array, in place: ``weight``, ``m`` and ``v`` (same shape) are updated.

    weight, grad, m, v: [...] (any shape, one dtype); step: the step's number, from 1.
    """
    xp = xp_of(weight)
    beta1, beta2 = betas
    weight *= 1 - lr * weight_decay  # decoupled weight decay: the weights shrink, the gradient is left alone
    m += (1 - beta1) * (grad - m)  # the first moment, a running mean of the gradient: β1 m + (1 − β1) g
    v *= beta2
    v += (1 - beta2) * grad * grad  # the second, of its square
    step_size = lr / (1 - beta1**step)  # bias corrections: m and v start at 0 and are too small at first
    denom = xp.sqrt(v) / math.sqrt(1 - beta2**step) + eps
    weight -= step_size * (m / denom)


def clip_grad_norm(grads, max_norm: float) -> float:
    """Scale every gradient of ``grads`` (nested dicts and lists of arrays) in place so that their joint norm,
    sqrt(sum of all squares), is at most ``max_norm``: by max_norm / (norm + 1e-6) when it is larger, as
    torch.nn.utils.clip_grad_norm_ does (Transformers' Trainer clips at 1.0, as LLaVA trains). -> the norm before."""
    arrays = [g for _, _, g in _pairs(grads, grads, ())]
    xp = xp_of(arrays[0])
    norm = float(xp.sqrt(sum(float((g.astype(xp.float64) ** 2).sum()) for g in arrays)))
    scale = max_norm / (norm + 1e-6)
    if scale < 1.0:
        for g in arrays:
            g *= scale
    return norm


@dataclass
class AdamW:
    """The state of AdamW over a nested dict of arrays (the trained parts of a model's params).

    ``step(params, grads, lr)`` updates every array of ``params`` that has a gradient in ``grads`` (the same
    nesting of dicts and lists), in place."""

    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01
    steps: int = 0
    # an array's path in params, e.g. ("multi_modal_projector", "linear_1", "weight") -> its (m, v)
    moments: dict = field(default_factory=dict)

    def step(self, params, grads, lr: float) -> None:
        if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr) and lr >= 0):
            raise ValueError(f"lr must be a finite number >= 0, got {lr!r}")
        pairs = list(_pairs(params, grads, ()))
        for path, weight, grad in pairs:  # every array checked before any is changed
            name = ".".join(str(p) for p in path)
            if not getattr(getattr(weight, "flags", None), "writeable", True):
                raise ValueError(f"{name} is read-only (memory-mapped from the file?): load the model with "
                                 "low_memory=False to train it")  # fmt: skip
            if getattr(weight, "shape", None) != getattr(grad, "shape", None):
                raise ValueError(f"{name}: the gradient's shape {list(grad.shape)} is not the weight's "
                                 f"{list(weight.shape)}")  # fmt: skip
        self.steps += 1
        for path, weight, grad in pairs:
            xp = xp_of(weight)
            if path not in self.moments:
                self.moments[path] = (xp.zeros_like(weight), xp.zeros_like(weight))
            m, v = self.moments[path]
            adamw_update(weight, grad, m, v, self.steps, lr, self.betas, self.eps, self.weight_decay)


def _pairs(params, grads, path):
    """(path, weight, gradient) for every array of ``grads``, found at the same place in ``params``."""
    if isinstance(grads, dict):
        for key, g in grads.items():
            yield from _pairs(params[key], g, (*path, key))
    elif isinstance(grads, list):
        for i, g in enumerate(grads):
            yield from _pairs(params[i], g, (*path, i))
    else:
        yield path, params, grads
