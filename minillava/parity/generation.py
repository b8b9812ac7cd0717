"""Where two greedy generations part, and whether that is a near-tie or a fault; and batch invariance.

Greedy decoding takes the most probable token at each step, so two correct implementations that differ by
rounding pick different tokens only where the best two are nearly tied. ``compare_generations`` finds, for
each batch row, the first step whose tokens differ and tells the two cases apart by the logits of that step
(both sides saw the same tokens until then, so their logits there should agree):

- within tolerance (max |diff| / max |reference logit| <= the logits tolerance): a *near-tie* broken the
  other way by rounding; the reference's margin of its token over the candidate's is small;
- out of tolerance: a *fault*: the candidate computes other logits; the reference's margin says by how much
  its choice was clear.

``batch_rows`` runs the same comparison between a prompt alone (the reference) and the same prompt as a
row of a left-padded batch (the candidate), logits and greedy tokens: padding that leaks into attention, wrong
positions for padded rows and image features merged into the wrong row are the classic LLaVA batch bugs.

Letters: B batch rows, n steps, V vocabulary, T positions.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..model.generate import as_id_set
from .compare import measure
from .report import fmt, json_ready

TOP_K = 5  # how many of each side's best tokens the report shows at a divergence


@dataclasses.dataclass
class Divergence:
    """One batch row's two greedy runs. ``step`` is None when their tokens agree throughout; else the first step
    whose tokens differ, the two tokens, the reference's margin (its logit of its own token minus its logit of the
    candidate's; the candidate's margin the other way), both sides' top tokens [(id, logit)], and the rel diff of
    the two sides' logits at that step. Without a divergence, ``rel`` is the largest over the steps compared and
    (``closest_step``, ``closest_margin``) the step where the reference's best two tokens were nearest."""

    row: int
    steps: int  # steps compared: to the first EOS or the last step of both
    tol: float
    rel: float
    step: int | None = None
    reference_token: int | None = None
    candidate_token: int | None = None
    margin: float | None = None
    candidate_margin: float | None = None
    top_reference: list = dataclasses.field(default_factory=list)
    top_candidate: list = dataclasses.field(default_factory=list)
    closest_step: int | None = None
    closest_margin: float | None = None
    message: str = ""

    @property
    def verdict(self) -> str:
        """ "same" (the same tokens, logits within tolerance), "tie" (they part where the logits agree within
        tolerance: a near-tie broken by rounding) or "fault" (the logits out of tolerance, or lengths differ)."""
        if self.message or not (self.rel <= self.tol):  # NaN: a fault
            return "fault"
        return "same" if self.step is None else "tie"

    @property
    def failed(self) -> bool:
        return self.verdict == "fault"


def _top(logits, k: int = TOP_K) -> list[tuple[int, float]]:
    order = np.argsort(-logits, kind="stable")[:k]  # [k] best first; a tie keeps the lower id first (argmax's)
    return [(int(i), float(logits[i])) for i in order]


def compare_generations(reference_tokens, candidate_tokens, reference_logits, candidate_logits, tol: float,
                        eos_token_id=()) -> list[Divergence]:  # fmt: skip
    """Each row's greedy tokens [B, n] and step logits [n, B, V] of the two sides -> a Divergence per row.

    A row is compared up to its first divergence, or up to the reference's first EOS (after it, both sides only
    pad), and within the steps both sides ran. ``tol``: the logits tolerance (relative to the largest |logit| of
    the reference at that step). ``eos_token_id``: an id, a list of them, or None.
    """
    reference_tokens, candidate_tokens = np.asarray(reference_tokens), np.asarray(candidate_tokens)  # [B, n]
    n = min(reference_tokens.shape[1], candidate_tokens.shape[1])
    eos = as_id_set(eos_token_id)
    out = []
    for b in range(reference_tokens.shape[0]):
        div = Divergence(row=b, steps=0, tol=tol, rel=0.0)
        rels = []  # each step's rel diff of the logits
        for s in range(n):
            ref_logits, cand_logits = reference_logits[s, b], candidate_logits[s, b]  # [V] each
            rels.append(measure(ref_logits, cand_logits)[1])
            div.steps = s + 1
            ref_token, cand_token = int(reference_tokens[b, s]), int(candidate_tokens[b, s])
            if ref_token != cand_token:
                div.step, div.reference_token, div.candidate_token = s, ref_token, cand_token
                div.margin = float(ref_logits[ref_token] - ref_logits[cand_token])
                div.candidate_margin = float(cand_logits[cand_token] - cand_logits[ref_token])
                div.top_reference, div.top_candidate = _top(ref_logits), _top(cand_logits)
                div.rel = rels[-1]  # the step where they part decides: until then both saw the same tokens
                break
            second, best = np.sort(ref_logits)[-2:]  # the reference's best two logits
            if div.closest_margin is None or best - second < div.closest_margin:
                div.closest_step, div.closest_margin = s, float(best - second)
            if ref_token in eos:
                break
        else:  # no divergence and no EOS: both sides should have run every step
            if reference_tokens.shape[1] != candidate_tokens.shape[1]:
                div.message = (
                    f"the reference made {reference_tokens.shape[1]} tokens, the candidate "
                    f"{candidate_tokens.shape[1]}: one side stopped early"
                )
        if div.step is None:
            div.rel = max(rels, default=0.0)
        else:
            div.closest_step = div.closest_margin = None  # the divergence itself says how close it was
        out.append(div)
    return out


def _token(decode, token_id: int) -> str:
    return f"{decode(token_id)!r} ({token_id})"


def format_divergence(div: Divergence, decode, indent: str = "  ") -> list[str]:
    """The lines of one row: the same tokens, or where they part, the margins, the verdict and both top-5s."""
    tol = f"{div.tol:.2g}"
    if div.step is None:
        line = f"row {div.row}: the same {div.steps} tokens; logits rel diff up to {fmt(div.rel)} (tol {tol})"
        if div.closest_step is not None:
            line += f"; closest call: step {div.closest_step}, the reference's best two {div.closest_margin:.3g} apart"
        lines = [line]
        if div.message:
            lines.append(f"{indent}{div.message}")
        elif div.failed:
            lines.append(f"{indent}FAIL: the logits differ beyond tolerance although the tokens agree")
        return lines
    ref, cand = _token(decode, div.reference_token), _token(decode, div.candidate_token)
    lines = [
        f"row {div.row}: parts at step {div.step}: reference {ref}, candidate {cand}",
        f"{indent}the reference's margin of its token over the candidate's: {div.margin:.4g} "
        f"(the candidate's, the other way: {div.candidate_margin:.4g})",
    ]
    if div.verdict == "tie":
        lines.append(
            f"{indent}logits at this step: rel diff {fmt(div.rel)} <= tol {tol}: a near-tie broken the other way by "
            "rounding, not a bug"
        )
    else:
        lines.append(
            f"{indent}logits at this step: rel diff {fmt(div.rel)} > tol {tol}: a fault, the candidate computes other "
            "logits for the same tokens"
        )
    for side, top in (("reference", div.top_reference), ("candidate", div.top_candidate)):
        best = " | ".join(f"{decode(i)!r} {logit:.4g}" for i, logit in top)
        lines.append(f"{indent}top-{len(top)} {side}: {best}")
    return lines


def divergence_json(div: Divergence) -> dict:
    """A Divergence for JSON (None where a number is not finite)."""
    return json_ready({**dataclasses.asdict(div), "verdict": div.verdict})


# ---------------------------------------------------------------------------------------------
# Batch invariance: each row of a left-padded batch against the same prompt alone
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class BatchRow:
    """Row ``row`` of the batch against the same prompt alone: its real and padded length, the logits at its real
    positions (max abs, rel diff against the prompt alone, tolerance), and the greedy comparison."""

    row: int
    tokens: int
    padded: int
    max_abs: float | None
    rel: float | None
    tol: float
    greedy: Divergence | None
    message: str = ""

    @property
    def failed(self) -> bool:
        return bool(self.message) or not (self.rel <= self.tol) or (self.greedy is not None and self.greedy.failed)


def batch_rows(batch, alone: list, tol: float, eos_token_id=()) -> list[BatchRow]:
    """``batch``: (inputs, logits [B, T, V], greedy tokens [B, n], step logits [n, B, V]) of the padded batch;
    ``alone``: the same per row, each of one row and no padding. -> a BatchRow per row.

    The batch row's real positions must hold the prompt's own tokens (else the two runs are of different
    prompts, and the row says so)."""
    inputs, logits, tokens, step_logits = batch
    mask = np.asarray(inputs["attention_mask"]).astype(bool)  # [B, T]
    out = []
    for b, (one_inputs, one_logits, one_tokens, one_steps) in enumerate(alone):
        real_ids = np.asarray(inputs["input_ids"])[b][mask[b]]  # [T_b]
        own_ids = np.asarray(one_inputs["input_ids"])[0]  # [T_b]
        row = BatchRow(b, int(mask[b].sum()), int(mask.shape[1] - mask[b].sum()), None, None, tol, None)
        if real_ids.shape != own_ids.shape or (real_ids != own_ids).any():
            row.message = "the batch row's tokens are not the prompt's own (the processor padded it wrongly)"
        else:
            row.max_abs, row.rel, _, _ = measure(one_logits[0], logits[b][mask[b]])  # [T_b, V] each
            greedy = compare_generations(one_tokens, tokens[b : b + 1], one_steps, step_logits[:, b : b + 1], tol,
                                         eos_token_id)  # fmt: skip
            row.greedy = dataclasses.replace(greedy[0], row=b)
        out.append(row)
    return out


def batch_json(row: BatchRow) -> dict:
    """A BatchRow for JSON (None where a number is not finite)."""
    out = {key: getattr(row, key) for key in ("row", "tokens", "padded", "max_abs", "rel", "tol", "message")}
    out["failed"] = row.failed
    out["greedy"] = None if row.greedy is None else divergence_json(row.greedy)
    return json_ready(out)
