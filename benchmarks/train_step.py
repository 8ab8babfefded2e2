"""Seconds per optimizer step and peak RSS of the CAFe training modes on the tiny LLaVA-OneVision.

    .venv/bin/python benchmarks/train_step.py            # prints one JSON object (about 1-2 minutes)
    .venv/bin/python benchmarks/train_step.py --steps 30 --out bench.json

Peak RSS: each mode alone in a fresh subprocess. Seconds per step: all modes in one process, each with
its own model copy and AdamW, steps taken round-robin, so that load from other processes on a shared
machine hits every mode alike (timing each mode in its own process swung 1.6x between identical runs
here). Modes:
  lm_only           next-token loss on the conversation (vision once)
  contrastive_only  image-embedding + text-embedding prompts (vision once)
  cafe_shared       both losses, vision tower + projector once per image (cafe_core.forward.shared_forward)
  cafe_naive        both losses, the authors' three independent passes (vision twice, naive_forward)
  cafe_tree         both losses in ONE language-model pass: embedding prompts packed as prefix-tree
                    branches of the conversation (cafe_core.forward.tree_forward)
A step = forward + backward + AdamW step; batches are collated before timing (data loading is not
part of a step), except that ``naive_forward`` re-runs the image processor for its image-embedding
pass by design, which is part of what it costs. Samples: sample-world photos with a multi-turn QA
conversation and a caption each (``data.world``), or synthetic images when that is not importable.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.report import emit  # noqa: E402

MODES = ("lm_only", "contrastive_only", "cafe_shared", "cafe_naive", "cafe_tree")
N_DISTINCT_BATCHES = 3  # cycled, so steps do not all see the same tensors


@dataclass
class Sample:
    image: object
    conversation: list
    caption: str | None


def make_samples(n: int, seed: int) -> tuple[list[Sample], str]:
    """``n`` sample-world (photo, multi-turn QA, caption) samples; returns (samples, source)."""
    from cafe_core.prompts import Turn
    from data.world import captions, questions, render_photo, sample_photo_specs

    rng = random.Random(seed)
    samples = []
    for spec in sample_photo_specs(n, seed=seed, split="train"):
        qa = rng.sample(questions(spec)[1:], 3)  # [0] is "describe" = the caption
        turns = [t for q in qa for t in (Turn("user", q.question), Turn("assistant", q.answer))]
        samples.append(Sample(render_photo(spec), turns, captions(spec)[0]))
    return samples, "data.world"


class ModeRunner:
    """One mode's own model copy, optimizer and batches; ``step()`` is one timed optimizer step."""

    def __init__(self, mode: str, preset, batch_size: int, seed: int, samples: list):
        import torch

        from cafe_core.inputs import PromptEncoder
        from cafe_core.losses import CafeLoss
        from cafe_core.tiny import build_tiny

        self.mode = mode
        self.model, processor = build_tiny(preset, seed=seed)
        self.model.train()
        self.encoder = PromptEncoder(processor)
        self.loss_fn = CafeLoss({"lm_only": "lm", "contrastive_only": "contrastive"}.get(mode, "cafe"))
        from cafe_core.forward import collate

        self.batches = [collate(self.encoder, samples[i * batch_size : (i + 1) * batch_size],
                                with_embeddings=self.loss_fn.needs_embeddings) for i in range(N_DISTINCT_BATCHES)]
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.0)
        self.n = 0

    def step(self) -> float:
        """Forward + backward + AdamW step on the next batch; returns wall seconds."""
        from cafe_core.forward import naive_forward, shared_forward, tree_forward

        batch = self.batches[self.n % N_DISTINCT_BATCHES]
        self.n += 1
        t0 = time.perf_counter()
        if self.mode == "cafe_naive":
            out = naive_forward(self.model, batch, self.encoder)
        elif self.mode == "cafe_tree":
            out = tree_forward(self.model, batch, self.encoder)
        else:
            out = shared_forward(self.model, batch, need_lm=self.loss_fn.needs_lm,
                                 need_embeddings=self.loss_fn.needs_embeddings)
        loss = self.loss_fn(lm_value=out.lm_loss, image_emb=out.image_emb, text_emb=out.text_emb).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    def token_counts(self) -> dict:
        b = self.batches[0]
        count = lambda d: int(d["attention_mask"].sum()) if d else 0  # noqa: E731
        return {"conv_tokens": count(b.conv), "image_prompt_tokens": count(b.image_prompt),
                "text_prompt_tokens": count(b.text_prompt)}


def time_interleaved(modes, preset, batch_size, steps, warmup, seed) -> dict:
    """Median step time per mode, steps taken round-robin across modes in one process, so that load
    from other processes on a shared machine hits every mode alike."""
    samples, source = make_samples(batch_size * N_DISTINCT_BATCHES, seed)
    runners = [ModeRunner(m, preset, batch_size, seed, samples) for m in modes]
    times = {m: [] for m in modes}
    for i in range(warmup + steps):
        for r in runners:
            t = r.step()
            if i >= warmup:
                times[r.mode].append(t)
    return {r.mode: {"seconds_per_step": statistics.median(times[r.mode]), "seconds_per_step_min": min(times[r.mode]),
                     "steps_timed": len(times[r.mode]), **r.token_counts(), "samples": source} for r in runners}


def _peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # ru_maxrss is KiB on Linux


def isolated(mode, preset, batch_size, steps, warmup, seed) -> dict:
    """Run one mode alone in this (fresh) process: its peak RSS and its own step times."""
    import torch

    samples, _ = make_samples(batch_size * N_DISTINCT_BATCHES, seed)
    runner = ModeRunner(mode, preset, batch_size, seed, samples)
    before = _peak_rss_mib()  # imports + model + collated batches; the rest is what training steps add
    times = [runner.step() for _ in range(warmup + steps)][warmup:]
    return {"peak_rss_mib": _peak_rss_mib(), "peak_rss_before_steps_mib": before,
            "seconds_per_step_isolated": statistics.median(times), "torch_threads": torch.get_num_threads()}


def resolve_preset(name: str, overrides: list[str]):
    """``cafe_core.tiny.PRESETS[name]`` with ``FIELD=INT`` overrides applied."""
    from dataclasses import replace

    from cafe_core.tiny import PRESETS

    if name not in PRESETS:
        raise SystemExit(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    try:
        fields = {k: int(v) for k, v in (kv.split("=", 1) for kv in overrides)}
        return replace(PRESETS[name], **fields)
    except (ValueError, TypeError) as e:
        raise SystemExit(f"bad --set {overrides}: {e}") from None


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="llava-onevision")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=INT",
                    help="override a TinyPreset size, e.g. --set text_hidden=256 --set image_size=64 (repeatable)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per mode (median reported)")
    ap.add_argument("--rss-steps", type=int, default=3, help="steps of each mode's RSS subprocess")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    # One thread by default: on a shared CPU, multi-threaded steps of a model this small are dominated
    # by threads waiting on each other, and medians swing 10x between runs.
    ap.add_argument("--threads", type=int, default=1, help="torch threads per mode process (0 = torch's default)")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    import torch

    preset = resolve_preset(args.preset, args.set)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(isolated(args.child, preset, args.batch_size, args.rss_steps, args.warmup, args.seed)))
        return {}

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    results = {}
    for mode in args.modes:  # peak RSS: each mode alone in a fresh process
        cmd = [sys.executable, __file__, "--child", mode, "--preset", args.preset, "--batch-size", str(args.batch_size),
               "--rss-steps", str(args.rss_steps), "--warmup", str(args.warmup), "--seed", str(args.seed),
               "--threads", str(args.threads), *[f"--set={kv}" for kv in args.set]]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"mode {mode} failed:\n{proc.stderr[-3000:]}")
        results[mode] = {"mode": mode, **json.loads(proc.stdout.strip().splitlines()[-1])}
    timed = time_interleaved(args.modes, preset, args.batch_size, args.steps, args.warmup, args.seed)
    for mode in args.modes:
        results[mode].update(timed[mode])
        print(f"{mode}: {results[mode]['seconds_per_step']:.3f} s/step, peak RSS {results[mode]['peak_rss_mib']:.0f} MiB",
              file=sys.stderr)

    report = {"preset": args.preset, "overrides": args.set, "batch_size": args.batch_size, "threads": args.threads,
              "modes": results}
    sec = {m: r["seconds_per_step"] for m, r in results.items()}
    if "cafe_shared" in sec and "lm_only" in sec:
        report["ratio_cafe_shared_to_lm_only"] = round(sec["cafe_shared"] / sec["lm_only"], 3)
    if "cafe_shared" in sec and "cafe_naive" in sec:
        report["ratio_cafe_shared_to_naive"] = round(sec["cafe_shared"] / sec["cafe_naive"], 3)
    if "cafe_tree" in sec and "lm_only" in sec:
        report["ratio_cafe_tree_to_lm_only"] = round(sec["cafe_tree"] / sec["lm_only"], 3)
    if "cafe_tree" in sec and "cafe_shared" in sec:
        report["ratio_cafe_tree_to_shared"] = round(sec["cafe_tree"] / sec["cafe_shared"], 3)
    emit(report, args.out)
    return report


if __name__ == "__main__":
    main()
