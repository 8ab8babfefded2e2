"""Every CAFe operation at a real checkpoint's shape (random weights): seconds, peak memory, tokens, FLOPs.

    python benchmarks/real_shape.py --photos 2                       # both real specs, full depth, CPU
    python benchmarks/real_shape.py --model smolvlm-256m-instruct --layers 2 --photos 1 --skip-training
    python benchmarks/real_shape.py --config-json my_config.json     # another checkpoint's config.json
    python benchmarks/real_shape.py --device cuda --dtype bfloat16 --peak-tflops 989 --out real_shape.json

The architecture of each spec (benchmarks/configs/*.json, see benchmarks/real_models.py) is built from its
config with random weights and saved as a local folder; then, through cafe_core.CafeModel: load, embed
images (native crops and base crops), embed texts, generate, stream, reply_logprob; through the app's CLI
(python -m app index / search / ask, on sample-world photos); and one CAFe training step in each of full,
LoRA and QLoRA modes through training.trainer.Trainer on a tiny sample-world album. ``--layers N`` keeps
every width and uses N vision and N text layers.

Memory: the model's operations run in one child process, where a sampling thread records the peak RSS of
each operation (``peak_rss_mib``; ``rss_before_mib`` is what was resident when it started); each CLI command
and each training mode is its own process, whose peak RSS the kernel reports (wait4). On CUDA,
``cuda_peak_mib`` is torch.cuda.max_memory_allocated per operation.

FLOPs (benchmarks/flops.py) are counted from the config and the actual token and crop counts:
``flops_per_s`` = counted FLOPs / seconds, and ``of_peak`` = that / ``--peak-tflops`` (unknown on CPU
unless given). CLI seconds are whole commands (interpreter, imports, model load, database).

Cost at full depth on CPU, one 256 px sample photo (--photos 1): about 70 TFLOP for LLaVA-OneVision (of which
the three training steps of batch 2 are 47) and 85 for SmolVLM (whose processor upscales every photo to 16
tiles + a global view), so ~25-30 minutes at 100 GFLOP/s; ``--train-batch 1`` or ``--train-modes full``
shortens it. The CI test runs 1 layer of each (same widths) in a few minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.report import emit  # noqa: E402

DEFAULT_SPECS = ("llava-onevision-0.5b-si", "smolvlm-256m-instruct")
OPS = ("embed_images_native", "embed_images_base", "embed_texts", "generate", "stream", "reply_logprob")
TRAIN_MODES = ("full", "lora", "qlora")
QUERY = "a red circle"
QUESTION = "What color is the background in the photo with the red circle?"
REPLY = "a photo of a red circle"


# ----------------------------------------------------------------------------------------- measuring
def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Measure:
    """Seconds, RSS before and sampled peak RSS (and CUDA peak) of the code in a ``with`` block."""

    def __init__(self, device: str = "cpu", interval: float = 0.005):
        self.device, self.interval = device, interval
        self.result: dict = {}

    def __enter__(self):
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.before = self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self.t0 = time.perf_counter()
        return self

    def _sample(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc):
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - self.t0
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())
        self.result = {"seconds": round(seconds, 4), "rss_before_mib": _mib(self.before), "peak_rss_mib": _mib(self.peak)}
        if self.device == "cuda":
            self.result["cuda_peak_mib"] = _mib(torch.cuda.max_memory_allocated())
        return False


def _mib(n_bytes: float) -> float:
    return round(n_bytes / 2**20, 1)


def with_flops(result: dict, flops: int, peak_tflops: float | None) -> dict:
    """``result`` plus the FLOPs it did, the rate, and the rate as a fraction of the hardware peak."""
    rate = flops / result["seconds"] if result.get("seconds") else None
    out = {**result, "flops": int(flops), "flops_per_s": rate}
    out["of_peak"] = rate / (peak_tflops * 1e12) if rate and peak_tflops else None
    return out


def run_process(cmd: list[str], env: dict, log_path: Path, timeout: float | None = None) -> dict:
    """Run a command; its wall seconds, exit code, peak RSS (the kernel's, for that process tree's largest
    process) and stdout."""
    out_path = log_path.with_suffix(".out")
    with open(out_path, "w") as out, open(log_path, "w") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=REPO)
        try:
            _, status, usage = _wait4(proc.pid, timeout)
        except TimeoutError:
            proc.kill()
            _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - t0
    return {"seconds": round(seconds, 3), "returncode": proc.returncode, "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "stdout": out_path.read_text(), "stderr_tail": log_path.read_text()[-3000:]}


def _wait4(pid: int, timeout: float | None):
    if timeout is None:
        return os.wait4(pid, 0)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got_pid, status, usage = os.wait4(pid, os.WNOHANG)
        if got_pid:
            return got_pid, status, usage
        time.sleep(0.05)
    raise TimeoutError


def _last_json(text: str):
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    return None


# ----------------------------------------------------------------------------------------- model child
def photo_costs(cafe, shape, photos) -> dict:
    """Per photo and crop setting: image tokens, prompt tokens, vision crops and FLOPs of its embedding."""
    from benchmarks.flops import crops_per_image, embed_flops
    from cafe_core import prompts
    from cafe_core.crops import base_view_inputs

    prompt = prompts.image_embedding_prompt(cafe.chat)
    image_id = cafe.encoder.image_token_id
    out = {k: {"image_tokens": [], "prompt_tokens": [], "crops": [], "flops": []} for k in ("native", "base")}
    for photo in photos:
        native = cafe.encoder.encode([prompt], [photo])
        batch, _ = base_view_inputs(cafe.model, cafe.encoder, [prompt], [photo], cafe.device, cafe.dtype)
        base_crops = 1 if cafe.model.config.model_type == "llava_onevision" else crops_per_image(cafe.model.config, batch)[0]
        for key, enc, crops in (("native", native, crops_per_image(cafe.model.config, native)[0]), ("base", batch, base_crops)):
            tokens = int(enc["attention_mask"].sum())
            out[key]["image_tokens"].append(int((enc["input_ids"] == image_id).sum()))
            out[key]["prompt_tokens"].append(tokens)
            out[key]["crops"].append(int(crops))
            out[key]["flops"].append(embed_flops(shape, crops, tokens))
    return out


def _count_calls(module):
    calls = []
    handle = module.register_forward_hook(lambda m, i, o: calls.append(1))
    return calls, handle


def model_child(args) -> dict:
    """Build, save, load and run every CafeModel operation (this process; see module doc)."""
    import gc

    import torch

    from benchmarks.flops import generate_flops, lm_flops, projector_flops, shape_from_config, vision_flops
    from benchmarks.real_models import build_model, load_spec, save_model
    from cafe_core import CafeModel, prompts
    from data.images import load_image

    if args.threads:
        torch.set_num_threads(args.threads)
    spec = load_spec(args.spec)
    folder = Path(args.folder)
    report: dict = {"spec": spec["name"], "device": args.device, "dtype": args.dtype_resolved,
                    "torch_threads": torch.get_num_threads()}
    with Measure() as m:
        model, processor = build_model(spec, args.layers or None, seed=args.seed)
    report["params"] = sum(p.numel() for p in model.parameters())
    report["build"] = m.result
    with Measure() as m:
        if args.dtype_resolved != "float32":
            model = model.to(getattr(torch, args.dtype_resolved))
        save_model(model, processor, folder)
    report["save"] = m.result
    del model, processor
    gc.collect()

    with Measure(args.device) as m:
        cafe = CafeModel.load(folder, device=args.device, dtype=args.dtype_resolved, batch_size=args.batch_size,
                              image_crops="native")
    report["load"] = m.result
    base_cafe = CafeModel(cafe.model, cafe.processor, name=str(folder), batch_size=args.batch_size, image_crops="base")
    shape = shape_from_config(cafe.model.config)
    photos = [load_image(p) for p in sorted(Path(args.photos_dir).glob("*.jpg"))[: args.photos]]
    costs = photo_costs(cafe, shape, photos)
    report["photo_sizes"] = [list(p.size) for p in photos]
    report["per_photo"] = costs
    peak = args.peak_tflops
    ops: dict = {}
    lm = cafe.family.language_model(cafe.model)  # one call per generated token

    def run(name, fn, flops_fn, extra=None):
        if name not in args.ops:
            return None
        for _ in range(args.warmup):  # first-call costs (CUDA context, kernels, allocator) are not the operation's
            fn()
        with Measure(args.device) as meas:
            value = fn()
        ops[name] = with_flops(meas.result, flops_fn(value), peak)
        if extra:
            ops[name].update(extra(value))
        return value

    run("embed_images_native", lambda: cafe.embed_images(photos), lambda v: sum(costs["native"]["flops"]))
    run("embed_images_base", lambda: base_cafe.embed_images(photos), lambda v: sum(costs["base"]["flops"]))
    texts = [QUERY, "a small blue star on the left and a large green triangle on the right, on a gray background"]
    text_tokens = [len(cafe.tokenizer(cafe.encoder.family_text(prompts.text_embedding_prompt(t, cafe.chat)),
                                      add_special_tokens=False)["input_ids"]) for t in texts]
    run("embed_texts", lambda: cafe.embed_texts(texts), lambda v: lm_flops(shape.text, text_tokens))

    first = photos[:1]
    n0, t0 = costs["native"]["crops"][0], _generation_tokens(cafe, QUESTION, first)

    def generated(fn):
        calls, handle = _count_calls(lm)
        try:
            text = fn()
        finally:
            handle.remove()
        return text, len(calls)

    gen = run("generate", lambda: generated(lambda: cafe.generate(QUESTION, first, max_new_tokens=args.new_tokens)),
              lambda v: generate_flops(shape, n0, t0, v[1]), lambda v: {"new_tokens": v[1]})
    run("stream", lambda: generated(lambda: "".join(cafe.stream(QUESTION, first, max_new_tokens=args.new_tokens))),
        lambda v: generate_flops(shape, n0, t0, v[1]),
        lambda v: {"new_tokens": v[1], "equals_generate": v[0] == gen[0] if gen else None})
    head = prompts.generation_prompt(prompts.DESCRIBE_INSTRUCTION, 1, chat=cafe.chat)
    n_reply = len(cafe.tokenizer(head + REPLY, add_special_tokens=False)["input_ids"]) - len(
        cafe.tokenizer(head, add_special_tokens=False)["input_ids"])

    def reply_flops(_):
        total = 0
        for photo, crops in zip(photos, costs["native"]["crops"]):
            tokens = _generation_tokens(cafe, prompts.DESCRIBE_INSTRUCTION, [photo], REPLY)
            total += vision_flops(shape, crops) + projector_flops(shape, crops) + lm_flops(shape.text, [tokens], n_reply)
        return total

    run("reply_logprob", lambda: cafe.reply_logprob(prompts.DESCRIBE_INSTRUCTION, REPLY, photos), reply_flops,
        lambda v: {"finite": all(math.isfinite(x) for x in v)})
    report["ops"] = ops
    report["flop_shape"] = {"vision": shape.vision.__dict__, "text": shape.text.__dict__,
                            "projector": [list(p) for p in shape.projector]}
    return report


def _generation_tokens(cafe, question, images, reply: str = "") -> int:
    """Tokens of the generation prompt over ``images`` (image tokens included), plus ``reply``."""
    from cafe_core import prompts

    text = prompts.generation_prompt(question, len(images), chat=cafe.chat) + reply
    return int(cafe.encoder.encode([text], images)["attention_mask"].sum())


# ----------------------------------------------------------------------------------------- train child
def train_child(args) -> dict:
    """One CAFe step in ``args.mode`` through training.trainer.Trainer (this process)."""
    import torch

    from benchmarks.flops import cafe_step_forward_flops, crops_per_image, shape_from_config, train_flops
    from training.config import TrainConfig
    from training.modes import ModeUnavailable
    from training.trainer import Trainer

    lr = 1e-5 if args.mode == "full" else 2e-4
    precision = "bf16" if args.dtype_resolved == "bfloat16" else ("fp16" if args.dtype_resolved == "float16" else "fp32")
    cfg = TrainConfig(base_model=str(args.folder), data=str(args.train_dir), augment="sampleworld", max_qa_turns=2,
                      caption_turn_prob=0.5, batch_size=args.train_batch, max_steps=args.train_steps, mode=args.mode,
                      lr=lr, vision_lr=2e-6, warmup_ratio=0.0, precision=precision, device=args.device,
                      out_dir=str(Path(args.work) / f"train-{args.mode}"), save_every=0, log_every=1,
                      grad_checkpointing=args.grad_checkpointing, max_seq_len=args.max_seq_len,
                      threads=args.threads)
    with Measure(args.device) as m:
        try:
            trainer = Trainer(cfg)
        except ModeUnavailable as e:
            return {"mode": args.mode, "skipped": str(e)}
    report = {"mode": args.mode, "setup": m.result,
              "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)}
    shape = shape_from_config(trainer.model.config)
    batches, steps = trainer.batches(), []
    for _ in range(args.train_steps):
        micro = [next(batches) for _ in range(cfg.grad_accum)]
        forward = {"vision": 0, "projector": 0, "language": 0}
        for batch, _, _ in micro:
            count = lambda d: d["attention_mask"].sum(1).tolist() if d else []  # noqa: E731
            part = cafe_step_forward_flops(
                shape, crops_per_image(trainer.model.config, batch.pixel), count(batch.conv),
                int((batch.conv["labels"][:, 1:] != -100).sum()), count(batch.image_prompt), count(batch.text_prompt))
            forward = {k: forward[k] + part[k] for k in forward}
        with Measure(args.device) as meas:
            record = trainer.step(micro)
        step = with_flops(meas.result, train_flops(forward, args.mode, cfg.lora_vision), args.peak_tflops)
        step["forward_flops"] = forward
        step.update({k: record.get(k) for k in ("loss", "lm_loss", "con_loss", "grad_norm")})
        step["conversation_tokens"] = int(micro[0][0].conv["attention_mask"].sum())
        steps.append(step)
    report["steps"] = steps
    report["finite"] = all(math.isfinite(s["loss"]) for s in steps)
    if args.device == "cuda":
        report["cuda_peak_mib"] = _mib(torch.cuda.max_memory_allocated())
    return report


# ----------------------------------------------------------------------------------------- orchestration
def _child_env(args) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TRANSFORMERS_OFFLINE": "1",
           "ANONYMIZED_TELEMETRY": "False", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(REPO),
           "TQDM_DISABLE": "1"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    return env


def _child(args, kind: str, extra: list[str], log: Path) -> tuple[dict | None, dict]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, *extra, *_common_argv(args)]
    proc = run_process(cmd, _child_env(args), log)
    return _last_json(proc["stdout"]) if proc["returncode"] == 0 else None, proc


def _common_argv(args) -> list[str]:
    argv = ["--device", args.device, "--dtype", args.dtype, "--photos", str(args.photos), "--layers", str(args.layers),
            "--batch-size", str(args.batch_size), "--new-tokens", str(args.new_tokens), "--seed", str(args.seed),
            "--threads", str(args.threads), "--train-batch", str(args.train_batch),
            "--train-steps", str(args.train_steps), "--max-seq-len", str(args.max_seq_len), "--work", str(args.work),
            "--warmup", str(args.warmup), "--ops", *args.ops]
    if args.peak_tflops:
        argv += ["--peak-tflops", str(args.peak_tflops)]
    if args.grad_checkpointing:
        argv.append("--grad-checkpointing")
    return argv


def cli_ops(args, folder: Path, photos_dir: Path, index_flops: int, work: Path, crops: str = "native") -> dict:
    """python -m app index / search / ask against the saved model, each a separate process, embedding photos
    with --image-crops ``crops`` (whose FLOPs ``index_flops`` counts)."""
    db = work / "db"
    common = ["--model", str(folder), "--db", str(db), "--device", args.device, "--image-crops", crops]
    commands = {
        "index": ["index", str(photos_dir), *common, "--json", "--no-progress"],
        "search": ["search", QUERY, *common, "--json", "--min-score", "-1"],
        # Random weights score every photo near 0: the thresholds are lowered so that retrieval, re-ranking,
        # the evidence check and the streamed answer all run.
        "ask": ["ask", QUESTION, *common, "--json", "--min-score", "-1", "--min-yes", "0"],
    }
    out = {}
    for name, argv in commands.items():
        proc = run_process([sys.executable, "-m", "app", *argv], _child_env(args), work / f"cli-{name}.log")
        result = {"seconds": proc["seconds"], "peak_rss_mib": proc["peak_rss_mib"], "returncode": proc["returncode"]}
        payload = _last_json(proc["stdout"])
        if proc["returncode"] != 0:
            result["error"] = proc["stderr_tail"][-1500:]
        elif name == "index":
            result = with_flops(result, index_flops, args.peak_tflops)
            result["indexed"] = payload.get("total") if payload else None
        elif name == "search":
            result["results"] = len(payload["results"]) if payload else None
        elif name == "ask":
            result["answered"] = bool(payload and not payload.get("refused"))
            result["sources"] = len(payload.get("sources", [])) if payload else 0
        out[name] = result
    return out


def run_spec(args, spec_name: str, photos_dir: Path, train_dir: Path) -> dict:
    from benchmarks.real_models import load_spec

    name = load_spec(spec_name)["name"]
    work = Path(args.work) / name
    work.mkdir(parents=True, exist_ok=True)
    folder = work / "model"
    t0 = time.perf_counter()
    report, proc = _child(args, "model", ["--spec", spec_name, "--folder", str(folder), "--photos-dir", str(photos_dir)],
                          work / "model.log")
    if report is None:
        return {"spec": name, "error": proc["stderr_tail"]}
    report["process_peak_rss_mib"] = proc["peak_rss_mib"]
    if not args.skip_cli:
        report["cli"] = cli_ops(args, folder, photos_dir, sum(report["per_photo"]["native"]["flops"]), work)
    if not args.skip_training:
        report["train"] = {}
        for mode in args.train_modes:
            result, proc = _child(args, "train", ["--mode", mode, "--folder", str(folder), "--train-dir", str(train_dir),
                                                   "--spec", spec_name], work / f"train-{mode}.log")
            result = result or {"mode": mode, "error": proc["stderr_tail"][-1500:]}
            result["peak_rss_mib"] = proc["peak_rss_mib"]
            result["process_seconds"] = proc["seconds"]
            report["train"][mode] = result
    report["total_seconds"] = round(time.perf_counter() - t0, 1)
    if not args.keep_models:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    return report


def summary(report: dict) -> dict:
    """The headline numbers of one spec (image tokens and FLOPs per photo, seconds per operation)."""
    per = report.get("per_photo", {})
    out = {k: {"image_tokens": v["image_tokens"], "gflops": [round(f / 1e9, 1) for f in v["flops"]]} for k, v in per.items()}
    out["seconds"] = {k: v["seconds"] for k, v in report.get("ops", {}).items()}
    out["seconds"].update({f"cli_{k}": v["seconds"] for k, v in report.get("cli", {}).items()})
    out["seconds"].update({f"train_{k}": v["steps"][0]["seconds"] for k, v in report.get("train", {}).items()
                           if v.get("steps")})
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", nargs="+", default=list(DEFAULT_SPECS),
                    help=f"spec names ({', '.join(DEFAULT_SPECS)}) or JSON paths (default: both real specs)")
    ap.add_argument("--config-json", metavar="PATH", help="a spec or a checkpoint's config.json (instead of --model)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--dtype", default="auto", help="float32 | bfloat16 | float16 | auto (bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--photos", type=int, default=2, help="sample-world photos embedded and indexed")
    ap.add_argument("--layers", type=int, default=0, help="reduced depth: N vision and N text layers (0: as published)")
    ap.add_argument("--skip-training", action="store_true")
    ap.add_argument("--skip-cli", action="store_true", help="no python -m app commands")
    ap.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS, help="CafeModel operations to time (default: all)")
    ap.add_argument("--train-modes", nargs="+", default=list(TRAIN_MODES), choices=TRAIN_MODES)
    ap.add_argument("--train-batch", type=int, default=2, help="samples per training step")
    ap.add_argument("--train-steps", type=int, default=1, help="timed training steps per mode")
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--max-seq-len", type=int, default=0, help="TrainConfig.max_seq_len of the training steps")
    ap.add_argument("--batch-size", type=int, default=4, help="CafeModel batch size (photos per forward)")
    ap.add_argument("--new-tokens", type=int, default=8, help="max_new_tokens of generate/stream")
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed calls before each timed model operation (default: 1 on CUDA, 0 on CPU)")
    ap.add_argument("--short-side", type=int, default=0, help="short side of the sample photos (0: the sample world's 256)")
    ap.add_argument("--peak-tflops", default=None,
                    help="the hardware's peak, to report each rate as a fraction: TFLOP/s, or 'measure' (CPU: the best "
                         "2048^3 matmul at --threads in --dtype, benchmarks.flops.measured_matmul_tflops)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default / OMP_NUM_THREADS)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="", help="working folder (default: a temporary one, removed)")
    ap.add_argument("--keep-models", action="store_true", help="keep the saved model folders under --work")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    # child processes
    ap.add_argument("--child", choices=("model", "train"), help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--photos-dir", help=argparse.SUPPRESS)
    ap.add_argument("--train-dir", help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=TRAIN_MODES, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.warmup is None:
        args.warmup = 1 if args.device == "cuda" else 0
    if args.dtype == "auto":
        args.dtype_resolved = "bfloat16" if args.device == "cuda" else "float32"
    else:
        args.dtype_resolved = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(args.dtype, args.dtype)
    if args.peak_tflops == "measure":
        if args.device != "cpu":
            ap.error("--peak-tflops measure is for the CPU; give a GPU's peak in TFLOP/s")
        from benchmarks.flops import measured_matmul_tflops

        args.peak_tflops = round(measured_matmul_tflops(args.dtype_resolved, args.threads), 4)
    elif args.peak_tflops is not None:
        try:
            args.peak_tflops = float(args.peak_tflops)
        except ValueError:
            ap.error(f"--peak-tflops: a number or 'measure', not {args.peak_tflops!r}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.child:
        report = model_child(args) if args.child == "model" else train_child(args)
        print(json.dumps(report))
        return report

    from data.synth import write_album
    from data.world import DEFAULT_SHORT_SIDE

    tmp = None
    if not args.work:
        tmp = tempfile.TemporaryDirectory(prefix="real_shape_")
        args.work = tmp.name
    work = Path(args.work)
    short = args.short_side or DEFAULT_SHORT_SIDE
    album = write_album(work / "album", n=args.photos, seed=args.seed, split="test", short_side=short)
    train_album = write_album(work / "train_album", n=max(4, args.train_batch * args.train_steps), seed=args.seed,
                              split="train", short_side=short)
    specs = [args.config_json] if args.config_json else args.model
    results = {}
    try:
        for spec in specs:
            print(f"real_shape: {spec} ...", file=sys.stderr, flush=True)
            report = run_spec(args, spec, album.out_dir / "photos", train_album.out_dir)
            results[report["spec"]] = report
            print(json.dumps({report["spec"]: summary(report)}), file=sys.stderr, flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()
    out = {"device": args.device, "dtype": args.dtype_resolved, "layers": args.layers or "published",
           "photos": args.photos, "short_side": short, "peak_tflops": args.peak_tflops if args.peak_tflops else "unknown",
           "models": results}
    emit(out, args.out)
    return out


if __name__ == "__main__":
    main()
