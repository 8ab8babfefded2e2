"""Peak memory of the LM loss at a real checkpoint's width: full-sequence logits (before) vs logits on the
supervised positions only (cafe_core.forward.supervised_lm_loss, after); prints one JSON object.

    .venv/bin/python benchmarks/lm_memory.py                      # LLaVA-OneVision-0.5B widths, ~2 min on 2 cores
    .venv/bin/python benchmarks/lm_memory.py --hidden 64 --vocab 5000 --tokens 300   # a quick check

What is measured is the part that changed: last hidden states (B, T, hidden) -> lm_head -> cross-entropy
-> backward into the hidden states and the head, for a batch shaped like a real training batch (default:
2 samples of 1,884 positions, image tokens included, 23 supervised answer tokens: what one LLaVA-OneVision
CAFe step at batch 2 saw). The transformer layers in front are the same either way and are left out.
Each variant runs in its own process; peak_rss_mib is that process's peak resident memory and
added_mib the peak above the inputs (hidden states and head), so the two are compared like for like.
"before" is the old trainer's computation: `lm_head(hidden)` over every position, then the loss in float32.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.report import emit  # noqa: E402

VARIANTS = ("full_logits", "supervised_only")


def child(args) -> dict:
    import time

    import torch
    import torch.nn as nn

    from cafe_core.forward import supervised_lm_loss
    from cafe_core.inputs import IGNORE_INDEX

    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)

    class Head(nn.Module):  # what supervised_lm_loss asks of a model: its output embeddings
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(args.hidden, args.vocab, bias=False, dtype=dtype)

        def get_output_embeddings(self):
            return self.head

    model = Head()
    hidden = torch.randn(args.batch, args.tokens, args.hidden, dtype=dtype, requires_grad=True)
    labels = torch.full((args.batch, args.tokens), IGNORE_INDEX)
    per_sample = args.supervised // args.batch
    for b in range(args.batch):  # the answer tokens at the end of each conversation
        labels[b, args.tokens - per_sample - 1 : args.tokens - 1] = torch.randint(0, args.vocab, (per_sample,))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if args.child == "full_logits":
        logits = model.head(hidden).float()
        loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, args.vocab), labels[:, 1:].reshape(-1))
    else:
        loss = supervised_lm_loss(model, hidden, labels)
    loss.backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"loss": float(loss), "seconds": round(seconds, 2), "peak_rss_mib": round(peak / 1024, 1),
            "added_mib": round((peak - base) / 1024, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=896, help="hidden size (default %(default)s: Qwen2-0.5B)")
    p.add_argument("--vocab", type=int, default=151_936, help="vocabulary (default %(default)s: Qwen2)")
    p.add_argument("--batch", type=int, default=2, help="samples (default %(default)s)")
    p.add_argument("--tokens", type=int, default=1884, help="positions per sample (default %(default)s)")
    p.add_argument("--supervised", type=int, default=23, help="supervised tokens in the batch (default %(default)s)")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"),
                   help="weights and hidden states (default %(default)s, as trained)")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return 0
    shape = ["--hidden", str(args.hidden), "--vocab", str(args.vocab), "--batch", str(args.batch), "--tokens",
             str(args.tokens), "--supervised", str(args.supervised), "--dtype", args.dtype]
    runs = {}
    for variant in VARIANTS:
        done = subprocess.run([sys.executable, __file__, *shape, "--child", variant], capture_output=True, text=True,
                              env=dict(os.environ, PYTHONPATH=str(REPO)), check=True)
        runs[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    before, after = runs["full_logits"], runs["supervised_only"]
    result = {
        "shape": {"batch": args.batch, "tokens": args.tokens, "hidden": args.hidden, "vocab": args.vocab,
                  "supervised": args.supervised, "dtype": args.dtype},
        "full_logits_bytes": args.batch * args.tokens * args.vocab * (2 if args.dtype == "bfloat16" else 4),
        **runs,
        "same_loss": abs(before["loss"] - after["loss"]) <= 1e-3 * max(1.0, abs(before["loss"])),
        "added_mib_ratio": round(before["added_mib"] / max(after["added_mib"], 1.0), 1),
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
