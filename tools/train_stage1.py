"""LLaVA's stage 1, retrained in NumPy: the demo model's projector re-initialised at random, then trained alone.

LLaVA trains in two stages (Liu et al. 2023, "Visual Instruction Tuning", section 5): stage 1 freezes the vision
tower and the language model and trains only the projector, which learns to turn image features into
"words" the frozen language model already reads; stage 2 trains the projector and the language model together.
Here the bundled demo model (tools/train_demo.py trained it with torch) loses its projector: its two linear layers
are drawn again at random (normal(0, 0.02) weights and zero biases, Transformers' initialisation with the
config's initializer_range), and its answers fall to near chance. Then minillava's own training code
(LlavaModel.loss_and_gradients with trainable=("multi_modal_projector",), model/optim.py's AdamW, warm-up and
cosine schedule, gradient clipping at 1.0) trains the projector again on freshly drawn pictures and
conversations of the demo's kinds, with the loss on the answer tokens only, and the 200 held-out pictures
(tools/train_demo.py's ``heldout_examples``, a seed training never sees) are answered with greedy generation
before and after.

Everything is NumPy: no torch. The gradients come from the backward functions beside each forward in
minillava/model (checked against torch's autograd in tests/model/test_training.py).

Usage:
    python tools/train_stage1.py                          # 350 steps of 32: about 4.5 minutes on 2 cores
    python tools/train_stage1.py --steps 100 --plot curve.png --json run.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train_demo  # noqa: E402  (the pictures, questions, tokenised batches and held-out set of the demo)

import minillava  # noqa: E402
from minillava.model import optim  # noqa: E402

INIT_STD = 0.02  # the demo config's initializer_range: Transformers draws Linear weights from normal(0, this)


def reinitialise_projector(model, seed: int) -> None:
    """Draw the projector again: weights normal(0, INIT_STD), biases zero (Transformers' initialisation)."""
    rng = np.random.default_rng(seed)
    for linear in model.params["multi_modal_projector"].values():
        linear["weight"] = (INIT_STD * rng.standard_normal(linear["weight"].shape)).astype(np.float32)
        if "bias" in linear:
            linear["bias"] = np.zeros(linear["bias"].shape, np.float32)


def heldout_accuracy(model, processor, examples) -> tuple[int, dict]:
    """Greedy answers to the held-out questions -> (number exactly right, accuracy per question type)."""
    answers, _ = train_demo.generate_answers(model, processor, examples)
    per_type, _, n_correct = train_demo.accuracy(examples, answers)
    return n_correct, per_type


def train(model, encoder, steps, batch_size, lr, warmup, seed, log_every=25, max_grad_norm=1.0):
    """Stage 1: AdamW on the projector alone. -> the loss of every step."""
    rng = np.random.default_rng([seed, 1])
    adamw = optim.AdamW(betas=(0.9, 0.999), weight_decay=0.0)  # LLaVA's stage 1: no weight decay
    losses, start = [], time.perf_counter()
    for step in range(steps):
        examples = [train_demo.make_example(rng) for _ in range(batch_size)]  # fresh pictures every step
        input_ids, attention_mask, labels = encoder.batch(examples)  # labels: -100 but on the answers
        pixel_values = train_demo.pixel_values([e.image for e in examples])
        loss, grads = model.loss_and_gradients(input_ids, pixel_values, attention_mask, labels)
        projector_grads = {"multi_modal_projector": grads["multi_modal_projector"]}
        optim.clip_grad_norm(projector_grads, max_grad_norm)
        adamw.step(model.params, projector_grads, optim.warmup_cosine(step, steps, lr, warmup))
        losses.append(loss)
        if step % log_every == 0 or step == steps - 1:
            print(f"step {step:4d}/{steps}  loss {loss:.4f}  {time.perf_counter() - start:5.0f} s", flush=True)
    return losses


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=350)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-2, help="peak learning rate")
    parser.add_argument("--warmup", type=float, default=0.03, help="warm-up, a fraction of the steps (LLaVA: 0.03)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heldout", type=int, default=200, help="held-out pictures to answer (all 200 by default)")
    parser.add_argument("--plot", type=Path, help="write the loss curve here (needs matplotlib)")
    parser.add_argument("--json", type=Path, help="write the losses and the accuracies here")
    args = parser.parse_args(argv)
    if min(args.steps, args.batch_size, args.heldout) < 1 or not (args.lr > 0) or not (0 <= args.warmup < 1):
        parser.error("--steps, --batch-size and --heldout must be >= 1, --lr > 0, --warmup in [0, 1)")

    from tokenizers import Tokenizer

    from minillava.demo import demo_folder

    model, processor = minillava.load_model(), minillava.load_processor()
    encoder = train_demo.Encoder(Tokenizer.from_file(str(demo_folder() / "tokenizer.json")))
    heldout = train_demo.heldout_examples()[: args.heldout]
    n = len(heldout)
    shipped, _ = heldout_accuracy(model, processor, heldout)
    reinitialise_projector(model, args.seed)
    before, _ = heldout_accuracy(model, processor, heldout)
    print(f"held-out answers right: shipped model {shipped}/{n}, projector re-initialised {before}/{n}", flush=True)

    start = time.perf_counter()
    warmup = int(args.warmup * args.steps)
    losses = train(model, encoder, args.steps, args.batch_size, args.lr, warmup, args.seed)
    seconds = time.perf_counter() - start
    after, per_type = heldout_accuracy(model, processor, heldout)
    print(f"trained {args.steps} steps of {args.batch_size} in {seconds:.0f} s; held-out answers right: "
          f"{after}/{n} (" + ", ".join(f"{k} {v:.0%}" for k, v in per_type.items()) + ")")  # fmt: skip

    if args.json:
        record = {"heldout": n, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                  "warmup_steps": warmup, "seed": args.seed, "train_seconds": seconds, "shipped": shipped,
                  "reinitialised": before, "trained": after, "per_type": per_type, "losses": losses}  # fmt: skip
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(losses, lw=1)
        ax.set(xlabel="step", ylabel="loss (answer tokens)", yscale="log",
               title=f"stage 1: the projector alone, {before} -> {after} of {n} right")  # fmt: skip
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
