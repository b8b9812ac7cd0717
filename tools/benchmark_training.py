"""One training step at the demo model's size: minillava (NumPy) against Transformers (torch), as ratios.

A step is the loss of a batch of the demo's conversations (pictures of shapes, one question each, the loss on the
answer tokens), its gradients, and an AdamW update, for the two stages of LLaVA's training:

    stage 1   the projector alone learns; vision tower and language model frozen (gradients flow through the
              language model to the projector, its weights get none)
    stage 2   the projector, the language model and lm_head learn; the vision tower frozen

minillava: ``LlavaModel.loss_and_gradients`` then ``optim.AdamW.step``. Transformers: the same checkpoint with
``LlavaForConditionalGeneration`` in float32, ``requires_grad`` set on the trained parts only, ``loss.backward()``
and ``torch.optim.AdamW``. The same batch (a fixed seed) for both. Each framework runs in a process of its own with
the same number of BLAS/torch threads, alternating, ``--rounds`` rounds; each process warms up once and takes the
median of ``--repeats`` steps; the ratio is the median of the per-round ratios (minillava / Transformers: below 1
is faster). Run it on a quiet machine and never turn its figures into assertions.

    python tools/benchmark_training.py                  # batch 32, 2 threads, 3 rounds: about 2 minutes
    python tools/benchmark_training.py --threads 1 --batch-size 8 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO))

from benchmark import THREAD_VARS, timed  # noqa: E402  (the inference benchmark's thread settings and timer)

STAGES = {"stage 1": ("multi_modal_projector",), "stage 2": ("multi_modal_projector", "language_model", "lm_head")}
LR = 1e-5  # small: the repeated steps barely move the model


def batch(size: int, seed: int = 0):
    """input_ids, attention_mask, labels [B, T] and pixel_values [B, 3, S, S] of ``size`` demo conversations."""
    import numpy as np
    import train_demo
    from tokenizers import Tokenizer

    from minillava.demo import demo_folder

    rng = np.random.default_rng(seed)
    examples = [train_demo.make_example(rng) for _ in range(size)]
    encoder = train_demo.Encoder(Tokenizer.from_file(str(demo_folder() / "tokenizer.json")))
    input_ids, attention_mask, labels = encoder.batch(examples)
    return input_ids, attention_mask, labels, train_demo.pixel_values([e.image for e in examples])


def run_minillava(args) -> dict:
    import minillava
    from minillava.model import optim

    model = minillava.load_model()
    input_ids, attention_mask, labels, pixel_values = batch(args.batch_size)
    result = {}
    for name, trainable in STAGES.items():
        adamw = optim.AdamW(weight_decay=0.0)

        def step(trainable=trainable, adamw=adamw):
            loss, grads = model.loss_and_gradients(input_ids, pixel_values, attention_mask, labels, trainable)
            grads.pop("inputs_embeds")
            adamw.step(model.params, grads, LR)
            return loss

        result[name] = timed(step, args.repeats)[0]
    result["loss"] = float(model.loss(input_ids, pixel_values, attention_mask, labels))
    return result


def run_transformers(args) -> dict:
    import torch
    from transformers import LlavaForConditionalGeneration

    from minillava.demo import demo_folder

    torch.set_num_threads(args.threads)
    model = LlavaForConditionalGeneration.from_pretrained(demo_folder(), dtype=torch.float32).eval()
    input_ids, attention_mask, labels, pixel_values = (torch.from_numpy(a) for a in batch(args.batch_size))
    result = {}
    for name, trainable in STAGES.items():
        for pname, p in model.named_parameters():
            p.requires_grad_(pname.removeprefix("model.").split(".")[0] in trainable)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=0.0)

        def step(opt=opt):
            opt.zero_grad(set_to_none=True)
            loss = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                         labels=labels).loss  # fmt: skip
            loss.backward()
            opt.step()
            return loss

        result[name] = timed(step, args.repeats)[0]
    with torch.no_grad():
        result["loss"] = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                               labels=labels).loss.item()  # fmt: skip
    result["torch"] = torch.__version__
    return result


def spawn(framework: str, args) -> dict:
    env = dict(os.environ, **{var: str(args.threads) for var in THREAD_VARS})
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", framework, "--threads", str(args.threads),
               "--batch-size", str(args.batch_size), "--repeats", str(args.repeats)]  # fmt: skip
    proc = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{framework} worker failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per process (after one warm-up)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="BLAS/torch threads for both frameworks")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--worker", choices=("minillava", "transformers"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.rounds, args.repeats, args.batch_size, args.threads) < 1:
        parser.error("--rounds, --repeats, --batch-size and --threads must be >= 1")
    if args.worker:
        result = run_minillava(args) if args.worker == "minillava" else run_transformers(args)
        print(json.dumps(result), flush=True)
        return
    rounds = []
    for i in range(args.rounds):
        print(f"round {i + 1}/{args.rounds} ...", file=sys.stderr, flush=True)
        rounds.append({"minillava": spawn("minillava", args), "transformers": spawn("transformers", args)})
    first = rounds[0]
    print(f"batch {args.batch_size} demo conversations, float32, {args.threads} thread(s) per framework, "
          f"{args.rounds} rounds x {args.repeats} steps; loss minillava {first['minillava']['loss']:.6f}, "
          f"Transformers {first['transformers']['loss']:.6f} (torch {first['transformers']['torch']})")  # fmt: skip
    print(f"{'step':<10}{'minillava':>12}{'Transformers':>14}{'ratio':>8}   per-round ratios")
    summary = {}
    for name in STAGES:
        ratios = [r["minillava"][name] / r["transformers"][name] for r in rounds]
        ours = statistics.median(r["minillava"][name] for r in rounds)
        theirs = statistics.median(r["transformers"][name] for r in rounds)
        summary[name] = {"minillava_s": ours, "transformers_s": theirs, "ratio": statistics.median(ratios),
                         "round_ratios": ratios}  # fmt: skip
        per_round = " ".join(f"{r:.2f}" for r in ratios)
        print(f"{name:<10}{ours * 1e3:>10.0f}ms{theirs * 1e3:>12.0f}ms{statistics.median(ratios):>8.2f}   {per_round}")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "rounds": rounds,
                                         "summary": summary}, indent=2, default=str) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
