"""CAFe training and indexing throughput on one GPU at LLaVA-OneVision-0.5B's shape, against the FLOP floor.

    python benchmarks/gpu_train.py --out gpu_train.json                  # H100/H200: about 5-10 minutes
    python benchmarks/gpu_train.py --peak-tflops 312 --batches 4 8 --out a100.json
    python benchmarks/gpu_train.py --device cpu --tiny --out /tmp/t.json  # tiny:llava-onevision, 2 steps (the CI check)

Training: cafe_core.forward.shared_forward + CafeLoss (LM + contrastive), AdamW, fp32 master weights under
bf16 autocast (what training/trainer.py does with ``precision: bf16``), on sample-world photos with multi-turn
QA conversations and captions (batches collated before timing). Swept over gradient checkpointing off/on
and ``--batches``; a setting that runs out of memory is recorded and larger batches of it are skipped.
Reported per setting: samples/s, peak memory (torch.cuda.max_memory_allocated), FLOPs per sample
(benchmarks/flops.py: vision once per image, the conversation, both embedding prompts, the LM head on
supervised tokens; x3 for forward + backward) and MFU = FLOPs per sample x samples/s / peak.

Indexing: CafeModel.embed_images on bf16 weights, native and base crops: photos/s end to end (image
preprocessing included) and model-only (inputs prepared first), each as a fraction of the FLOP floor
(counted FLOPs / peak = the time the photos would take at the hardware's peak).

Targets reported against: training MFU >= 35%, indexing >= 60% of the FLOP floor. ``--time-budget`` bounds
the sweep (settings that would start after it are skipped and listed), so the script ends in time.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.report import emit  # noqa: E402

H100_BF16_DENSE_TFLOPS = 989.0  # H100/H200 SXM, bf16 dense (no sparsity)
TARGETS = {"train_mfu": 0.35, "index_of_floor": 0.60}


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_memory_gib(device) -> float:
    import torch

    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)  # process peak RSS (KiB -> GiB)


def _reset_peak(device):
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def build(args, device):
    """(model, processor, name): random weights, fp32 master copy on ``device``."""
    import torch

    if args.tiny:
        from cafe_core.tiny import build_tiny

        model, processor = build_tiny("llava-onevision")
        return model.to(device), processor, "tiny:llava-onevision"
    from benchmarks.real_models import build_model, load_spec

    spec = load_spec(args.spec)
    with torch.device(device):  # initialise on the GPU directly (0.9B parameters)
        model, processor = build_model(spec, args.layers or None, seed=args.seed)
    return model.to(device), processor, spec["name"] + (f" ({args.layers} layers)" if args.layers else "")


def step_flops(shape, config, batch) -> int:
    from benchmarks.flops import cafe_step_forward_flops, crops_per_image, train_flops

    count = lambda d: d["attention_mask"].sum(1).tolist() if d else []  # noqa: E731
    forward = cafe_step_forward_flops(shape, crops_per_image(config, batch.pixel), count(batch.conv),
                                      int((batch.conv["labels"][:, 1:] != -100).sum()), count(batch.image_prompt),
                                      count(batch.text_prompt))
    return train_flops(forward)


class Sweep:
    """Training settings timed one after another on one model and one AdamW, within a time budget."""

    def __init__(self, model, encoder, samples, shape, device, args, deadline):
        import torch

        from cafe_core.losses import CafeLoss

        self.model, self.encoder, self.samples, self.shape = model, encoder, samples, shape
        self.device, self.args, self.deadline = device, args, deadline
        self.loss_fn = CafeLoss("cafe")
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0, fused=device.type == "cuda")
        self.autocast = torch.bfloat16 if args.dtype == "bfloat16" else None

    def batches(self, batch_size: int) -> list:
        from cafe_core.forward import collate

        out = []
        for i in range(self.args.distinct_batches):
            chunk = [self.samples[(i * batch_size + j) % len(self.samples)] for j in range(batch_size)]
            out.append(collate(self.encoder, chunk).to(self.device, None))
        return out

    def _step(self, batch) -> float:
        import torch

        from cafe_core.forward import shared_forward

        with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
            out = shared_forward(self.model, batch)
            loss = self.loss_fn(lm_value=out.lm_loss, image_emb=out.image_emb, text_emb=out.text_emb).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def run(self, checkpointing: bool, batch_size: int) -> dict:
        import torch

        result = {"grad_checkpointing": checkpointing, "batch_size": batch_size}
        if checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.model.gradient_checkpointing_disable()
        self.model.train()
        batches = self.batches(batch_size)
        flops = [step_flops(self.shape, self.model.config, b) for b in batches]
        _reset_peak(self.device)
        try:
            losses = []
            for i in range(self.args.warmup):
                losses.append(self._step(batches[i % len(batches)]))
            _sync(self.device)
            t0, done, step_flops_sum = time.perf_counter(), 0, 0
            while done < self.args.steps and (done == 0 or time.perf_counter() < self.deadline):
                losses.append(self._step(batches[done % len(batches)]))
                step_flops_sum += flops[done % len(batches)]
                done += 1
            _sync(self.device)
            seconds = time.perf_counter() - t0
        except torch.OutOfMemoryError:
            self.optimizer.zero_grad(set_to_none=True)
            _reset_peak(self.device)
            return {**result, "oom": True}
        losses = [float(x) for x in losses]
        rate = batch_size * done / seconds
        achieved = step_flops_sum / seconds
        peak = self.args.peak_tflops
        result.update({
            "steps": done, "step_s": seconds / done, "samples_per_s": rate, "peak_memory_gib": _peak_memory_gib(self.device),
            "flops_per_sample": step_flops_sum / (done * batch_size), "achieved_tflops": achieved / 1e12,
            "mfu": achieved / (peak * 1e12) if peak else None, "loss_first": losses[0], "loss_last": losses[-1],
            "losses_finite": all(math.isfinite(x) for x in losses),
            "conversation_tokens_per_sample": float(batches[0].conv["attention_mask"].sum()) / batch_size,
        })
        return result


def indexing(model, processor, photos, shape, device, args) -> dict:
    """Photos/s of CafeModel.embed_images (bf16 weights), native and base crops, against the FLOP floor."""
    import torch

    from benchmarks.real_shape import photo_costs
    from cafe_core import CafeModel, prompts

    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    index_model = copy.deepcopy(model).to(dtype).eval()
    out = {}
    for crops in ("native", "base"):
        cafe = CafeModel(index_model, processor, batch_size=args.index_batch, image_crops=crops)
        flops = sum(photo_costs(cafe, shape, photos)[crops]["flops"])
        cafe.embed_images(photos[: args.index_batch])  # warm-up (kernels, allocator)
        _sync(device)
        t0 = time.perf_counter()
        vectors = cafe.embed_images(photos)
        _sync(device)
        end_to_end = time.perf_counter() - t0
        # Model only: the same batches prepared first, then only the forward passes timed.
        prompt = prompts.image_embedding_prompt(cafe.chat)
        prepared = [cafe.embedding_batch([prompt] * len(chunk), chunk)
                    for chunk in (photos[i : i + args.index_batch] for i in range(0, len(photos), args.index_batch))]
        _sync(device)
        t0 = time.perf_counter()
        for batch, mm in prepared:
            cafe.embed_batch(batch, mm)
        _sync(device)
        model_only = time.perf_counter() - t0
        peak = args.peak_tflops
        floor = flops / (peak * 1e12) if peak else None
        out[crops] = {
            "photos": len(photos), "batch_size": args.index_batch, "flops_per_photo": flops / len(photos),
            "photos_per_s": len(photos) / end_to_end, "model_photos_per_s": len(photos) / model_only,
            "floor_s": floor, "of_floor": floor / end_to_end if floor else None,
            "model_of_floor": floor / model_only if floor else None,
            "finite": bool(torch.isfinite(torch.as_tensor(vectors)).all()),
        }
    del index_model
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--tiny", action="store_true", help="tiny:llava-onevision instead of the real shape (CPU check)")
    ap.add_argument("--spec", default="llava-onevision-0.5b-si", help="a benchmarks/configs spec name or JSON path")
    ap.add_argument("--layers", type=int, default=0, help="reduced depth (same widths); 0: as published")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"), help="autocast dtype of training; weights of indexing")
    ap.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes to sweep (default 4 8 16 32; tiny: 2 4)")
    ap.add_argument("--checkpointing", default="both", choices=("both", "on", "off"))
    ap.add_argument("--steps", type=int, default=None, help="timed steps per setting (default 6; tiny: 2)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps per setting (default 2; tiny: 1)")
    ap.add_argument("--distinct-batches", type=int, default=2, help="different batches cycled per setting")
    ap.add_argument("--index-photos", type=int, default=None, help="photos embedded per crop setting (default 128; tiny: 4)")
    ap.add_argument("--index-batch", type=int, default=None, help="photos per embedding forward (default 32; tiny: 2)")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help=f"the hardware's peak in TFLOP/s (default on CUDA: {H100_BF16_DENSE_TFLOPS}, H100/H200 SXM bf16 dense; CPU: unknown)")
    ap.add_argument("--time-budget", type=float, default=480.0, help="seconds after which no new sweep setting starts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: default)")
    ap.add_argument("--out", type=Path, help="write the JSON here (it is always printed)")
    args = ap.parse_args(argv)
    tiny = args.tiny
    args.batches = args.batches or ([2, 4] if tiny else [4, 8, 16, 32])
    args.steps = args.steps or (2 if tiny else 6)
    args.warmup = args.warmup if args.warmup is not None else (1 if tiny else 2)
    args.index_photos = args.index_photos or (4 if tiny else 128)
    args.index_batch = args.index_batch or (2 if tiny else 32)
    if args.peak_tflops is None and args.device == "cuda":
        args.peak_tflops = H100_BF16_DENSE_TFLOPS
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    t_start = time.perf_counter()
    deadline = t_start + args.time_budget
    import torch

    from benchmarks.flops import shape_from_config
    from benchmarks.train_step import make_samples
    from cafe_core.family import family_for
    from cafe_core.inputs import PromptEncoder

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here (use --device cpu --tiny for the CPU check)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(args.seed)
    model, processor, name = build(args, device)
    model.config.use_cache = False
    shape = shape_from_config(model.config)
    encoder = PromptEncoder(processor, family_for(model.config))
    samples, source = make_samples(max(args.batches) * args.distinct_batches, args.seed)
    photos = [s.image for s in make_samples(args.index_photos, args.seed + 1)[0]]
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "model": name,
        "params": sum(p.numel() for p in model.parameters()), "precision": f"{args.dtype} autocast, fp32 weights + AdamW",
        "attention": getattr(model.config, "_attn_implementation", None), "samples": source,
        "peak_tflops": args.peak_tflops if args.peak_tflops else "unknown", "targets": TARGETS,
    }

    report["index"] = indexing(model, processor, photos, shape, device, args)  # first: always within the budget
    sweep = Sweep(model, encoder, samples, shape, device, args, deadline)
    runs, skipped = [], []
    settings = {"both": (False, True), "on": (True,), "off": (False,)}[args.checkpointing]
    for checkpointing in settings:
        for batch_size in sorted(args.batches):
            if time.perf_counter() > deadline:
                skipped.append({"grad_checkpointing": checkpointing, "batch_size": batch_size, "reason": "time budget"})
                continue
            result = sweep.run(checkpointing, batch_size)
            runs.append(result)
            print(json.dumps(result), file=sys.stderr, flush=True)
            if result.get("oom"):
                skipped += [{"grad_checkpointing": checkpointing, "batch_size": b, "reason": "out of memory at a smaller batch"}
                            for b in sorted(args.batches) if b > batch_size]
                break
    report["train"] = runs
    report["skipped"] = skipped
    ok = [r for r in runs if not r.get("oom")]
    best = max(ok, key=lambda r: r["samples_per_s"]) if ok else None
    report["best_train"] = best
    if args.peak_tflops and best:
        report["meets_targets"] = {
            "train_mfu": best["mfu"] >= TARGETS["train_mfu"],
            "index_of_floor": {k: v["model_of_floor"] >= TARGETS["index_of_floor"] for k, v in report["index"].items()},
        }
    report["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    emit(report, args.out)
    return report


if __name__ == "__main__":
    main()
