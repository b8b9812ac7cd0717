"""The training loss of visual instruction tuning (Liu et al. 2023, section 3): the language model's
cross-entropy on the next token, averaged over the tokens that carry a label (the answers; the prompt,
the image tokens and the padding are marked ignore_index, -100).

    loss = -1/n  sum over counted (b, t) of  log softmax(logits[b, t])[labels[b, t + 1]]

This is the loss LlavaForConditionalGeneration returns when given ``labels`` (Transformers'
ForCausalLMLoss): labels are given at the positions of the tokens themselves, and the logits at t
predict the token at t + 1, so the shift by one happens here; the last position predicts nothing.

Shape letters: B = batch, T = positions, V = vocab, n = counted positions (labels not ignore_index).
"""

from __future__ import annotations

from .backend import xp_of
from .layers import softmax


def shift_labels(labels, ignore_index=-100):
    """The target of each position: the label of the next one, and ignore_index at the last position
    (Transformers pads the labels with ignore_index on the right and drops the first).

    labels: [B, T]  ->  [B, T]
    """
    xp = xp_of(labels)
    targets = xp.full_like(labels, ignore_index)  # [B, T]
    targets[:, :-1] = labels[:, 1:]  # position t predicts token t + 1
    return targets


def _counted(logits, labels, ignore_index):
    """The positions that count, their logits upcast, and their targets; a clear error if none count.

    logits: [B, T, V], labels: [B, T]  ->  counted [B, T] bool, z [n, V], targets [n]
    """
    xp = xp_of(logits)
    targets = shift_labels(labels, ignore_index)  # [B, T]
    counted = targets != ignore_index  # [B, T]
    if not bool(counted.any()):  # torch would return 0 / 0 = NaN
        raise ValueError(f"labels: every position is ignore_index ({ignore_index}): no token to learn from")
    # ForCausalLMLoss upcasts the logits to float32 (float16 logits would lose the small probabilities);
    # float64 logits stay float64 here (Transformers' .float() would round them), for finite-difference checks.
    dtype = xp.promote_types(logits.dtype, xp.float32)
    z = logits[counted].astype(dtype, copy=False)  # [n, V], only the rows that count
    return counted, z, targets[counted]


def cross_entropy(logits, labels, ignore_index=-100) -> float:
    """The mean next-token cross-entropy over the positions whose shifted label is not ignore_index
    (torch's cross_entropy with reduction='mean': the sum over counted positions divided by their number).

    logits: [B, T, V], labels: [B, T] integer token ids or ignore_index  ->  a float
    """
    xp = xp_of(logits)
    _, z, targets = _counted(logits, labels, ignore_index)  # [n, V], [n]
    # -log softmax(z)[y] = logsumexp(z) - z[y]; log-sum-exp with the row maximum subtracted cannot overflow.
    m = z.max(axis=-1, keepdims=True)  # [n, 1]
    log_sum_exp = m[:, 0] + xp.log(xp.exp(z - m).sum(axis=-1))  # [n]
    picked = z[xp.arange(z.shape[0]), targets]  # [n], the logit of each target token
    return float((log_sum_exp - picked).sum() / z.shape[0])


def cross_entropy_backward(logits, labels, ignore_index=-100):
    """Gradient of ``cross_entropy`` with respect to the logits: d/dz (logsumexp(z) - z[y]) = softmax(z) - one_hot(y)
    at each counted position, divided by their number n (the mean), and zero at the positions that do not count
    (ignored labels, and the last position, which predicts nothing).

    logits: [B, T, V], labels: [B, T]  ->  dlogits [B, T, V] in the logits' dtype
    """
    xp = xp_of(logits)
    counted, z, targets = _counted(logits, labels, ignore_index)  # [B, T], [n, V], [n]
    n = z.shape[0]
    g = softmax(z)  # [n, V], a new array
    g[xp.arange(n), targets] -= 1.0  # softmax - one_hot
    g /= n
    dlogits = xp.zeros(logits.shape, dtype=logits.dtype)  # [B, T, V], zero where nothing is counted
    dlogits[counted] = g  # cast to the logits' dtype
    return dlogits
