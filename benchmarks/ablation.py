"""The paper's claim at our scale: CAFe vs contrastive-only vs LM-only, same data, budget and seed.

    .venv/bin/python benchmarks/ablation.py                       # base runs/demo-stage1/final, the demo budget
    .venv/bin/python benchmarks/ablation.py --base tiny:llava-demo --steps 300 --batch-size 32

CAFe's headline claim (arXiv 2503.19900): the joint loss keeps retrieval close to contrastive-only
training **and** keeps generation as good as (or less hallucinated than) LM-only training. Here each
variant is trained by the trainer in its own process from the same base model (``--base``; the default
is the LM-pretrained tiny LVLM that stands in for a pretrained LVLM), with the config of
``training/configs/demo-stage2-cafe.yaml`` and ``--set`` overrides for the loss, output folder and
budget, then evaluated with ``training.evaluate.evaluate`` on the test split. The base model itself is
evaluated too, as the "before" row (``--no-base`` skips it).

Outputs (``--out``, default benchmarks/results): ``ablation.json`` (every metric, training seconds,
settings), ``ablation.md`` (the table) and ``ablation.png`` (grouped bars, ``training.plots.plot_ablation``).
Training runs go to ``--runs-dir`` (default runs/ablation/<variant>).

Safe to interrupt and rerun: a finished run whose config matches is reused, an unfinished one resumes
from its last checkpoint (``--resume``), a run with another config is started afresh; outputs are
written atomically. Training seconds are the wall-clock of the training process (startup included;
after an interruption, only the process that finished the run).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data.atomic import atomic_write_json, atomic_write_text  # noqa: E402

log = logging.getLogger("ablation")

DEFAULT_CONFIG = REPO / "training" / "configs" / "demo-stage2-cafe.yaml"
VARIANTS = {  # name -> (loss, label)
    "cafe": ("cafe", "CAFe (LM + contrastive)"),
    "contrastive": ("contrastive", "contrastive only"),
    "lm": ("lm", "LM only"),
}
BASE_LABEL = "base (no fine-tuning)"
# The table's columns: (metric key of training.evaluate, column title).
COLUMNS = (
    ("t2i_recall@1", "t2i R@1"),
    ("i2t_recall@1", "i2t R@1"),
    ("vqa_accuracy", "VQA acc"),
    ("pope_adversarial_f1", "POPE F1 (adv)"),
    ("modality_centroid_distance", "modality gap (centroid dist.)"),
    ("modality_gap", "paired − unpaired cos"),
)
TRAIN_STATE = "ablation_train.json"  # per run: training seconds, written when the run finished


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default="runs/demo-stage1/final",
                   help="base model of every variant: a folder, hub id or tiny:<preset> (e.g. tiny:llava-demo)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="trainer config the variants share")
    p.add_argument("--data", help="training data (default: the config's)")
    p.add_argument("--test-data", help="sample-world test split to evaluate on (default: the config's eval_data)")
    p.add_argument("--steps", type=int, help="optimizer steps per variant (default: the config's max_steps)")
    p.add_argument("--batch-size", type=int, help="per-step batch (default: the config's)")
    p.add_argument("--seed", type=int, help="seed of every variant (default: the config's)")
    p.add_argument("--eval-max-questions", type=int, default=400, help="VQA questions and POPE probes evaluated")
    p.add_argument("--eval-max-photos", type=int, default=400, help="test photos evaluated")
    p.add_argument("--runs-dir", default="runs/ablation", help="where the training runs go")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="where the results go")
    p.add_argument("--device", default="auto", help="evaluation device (training follows the config)")
    p.add_argument("--no-base", action="store_true", help="do not evaluate the base model")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra trainer config override for every variant (repeatable)")
    return p


def variant_overrides(args, variant: str) -> list[str]:
    """``--set`` items that turn the shared config into one variant's run."""
    items = [f"base_model={args.base}", f"loss={VARIANTS[variant][0]}",
             f"out_dir={Path(args.runs_dir) / variant}", "eval_data="]  # evaluated here, uniformly
    for key, value in (("data", args.data), ("max_steps", args.steps), ("batch_size", args.batch_size),
                       ("seed", args.seed)):
        if value is not None:
            items.append(f"{key}={value}")
    return items + list(args.overrides)


def train_variant(args, variant: str) -> dict:
    """Train one variant in a subprocess (or reuse/resume its run); returns {run_dir, final, seconds}."""
    from training.config import load_config, to_dict

    overrides = variant_overrides(args, variant)
    cfg = load_config(args.config, overrides).validate()
    out = Path(cfg.out_dir)
    final, saved_cfg = out / "final", out / "config.yaml"
    if saved_cfg.exists():
        import yaml

        if yaml.safe_load(saved_cfg.read_text()) != to_dict(cfg):
            log.info("%s: %s holds a run with another config; starting afresh", variant, out)
            shutil.rmtree(out)
    state = out / TRAIN_STATE
    if (final / "config.json").exists() and state.exists():
        log.info("%s: reusing the finished run in %s", variant, out)
        return {"run_dir": str(out), "final": str(final), **json.loads(state.read_text())}
    cmd = [sys.executable, "-m", "training", "train", "--config", str(args.config), "--resume"]
    for item in overrides:
        cmd += ["--set", item]
    log.info("%s: training (%s steps, batch %s) -> %s", variant, cfg.max_steps, cfg.batch_size, out)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env)  # same cwd as ours, so relative paths mean the same in both
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"training {variant} failed (exit {proc.returncode}); see the output above")
    record = {"seconds": round(seconds, 2), "steps": cfg.max_steps, "batch_size": cfg.batch_size}
    atomic_write_json(state, record)
    return {"run_dir": str(out), "final": str(final), **record}


def evaluate_model(model_path: str, args, out_dir: Path | None) -> dict:
    """``training.evaluate.evaluate`` of one model on the test split, with the shared settings."""
    from cafe_core import CafeModel
    from training.evaluate import EvalConfig, evaluate

    model = CafeModel.load(model_path, device=args.device, dtype="float32")
    cfg = EvalConfig(out_dir=out_dir, max_questions=args.eval_max_questions, max_photos=args.eval_max_photos,
                     progress=sys.stderr.isatty())
    return evaluate(model, args.test_data, cfg)


def markdown_report(results: dict) -> str:
    """The Markdown table (one row per model) plus the settings and the deltas the claim is about."""
    from training.plots import markdown_table

    s = results["settings"]
    rows = {}
    for name, r in results["models"].items():
        row = {title: r["metrics"].get(key) for key, title in COLUMNS}
        row["train s"] = r.get("train_seconds")
        rows[r["label"]] = row
    keys = [title for _, title in COLUMNS] + ["train s"]
    lines = [
        "# Ablation: CAFe vs contrastive-only vs LM-only",
        "",
        f"Base `{s['base']}`, data `{s['data']}`, {s['steps']} steps x batch {s['batch_size']}, seed {s['seed']}, "
        f"config `{s['config']}`. Evaluated on `{s['test_data']}` ({s['eval_max_photos']} photos max, "
        f"{s['eval_max_questions']} VQA questions / POPE probes max) with `training.evaluate`.",
        "",
        markdown_table(rows, keys),
        "",
        "R@1: recall at 1 (text->image, image->text). VQA acc: exact match. POPE F1 on adversarial probes. "
        "Modality gap: distance between the image and text embedding centroids (smaller = one shared space); "
        "paired − unpaired cos: how much closer a photo is to its own caption than to others (larger = better). "
        "train s: wall-clock seconds of the training process.",
    ]
    m = results["models"]
    if all(v in m for v in VARIANTS):
        def delta(a, b, key):
            x, y = m[a]["metrics"].get(key), m[b]["metrics"].get(key)
            return "–" if x is None or y is None else f"{x - y:+.3f}"

        lines += ["", "The claim, in numbers:", "",
                  f"- retrieval, CAFe − contrastive-only: t2i R@1 {delta('cafe', 'contrastive', 't2i_recall@1')}, "
                  f"i2t R@1 {delta('cafe', 'contrastive', 'i2t_recall@1')} (close to 0 = retrieval kept)",
                  f"- generation, CAFe − LM-only: VQA acc {delta('cafe', 'lm', 'vqa_accuracy')}, "
                  f"POPE F1 (adv) {delta('cafe', 'lm', 'pope_adversarial_f1')} (>= 0 = generation kept)"]
    return "\n".join(lines) + "\n"


def run(args) -> dict:
    """Train and evaluate every variant, write the outputs; returns the results dict."""
    from training.config import load_config
    from training.plots import plot_ablation

    shared = load_config(args.config, variant_overrides(args, "cafe"))
    args.data = args.data or shared.data
    args.test_data = args.test_data or load_config(args.config).eval_data
    if not args.test_data or not Path(args.test_data).exists():
        raise SystemExit(f"error: test split {args.test_data!r} does not exist (--test-data)")
    out = Path(args.out)
    settings = {"base": args.base, "config": str(args.config), "data": args.data, "test_data": args.test_data,
                "steps": shared.max_steps, "batch_size": shared.batch_size, "seed": shared.seed,
                "eval_max_questions": args.eval_max_questions, "eval_max_photos": args.eval_max_photos,
                "overrides": list(args.overrides)}
    models: dict[str, dict] = {}
    if not args.no_base:
        log.info("evaluating the base model %s", args.base)
        models["base"] = {"label": BASE_LABEL, "model": args.base, "train_seconds": None,
                          "metrics": evaluate_model(args.base, args, None)}
    for variant, (_, label) in VARIANTS.items():
        trained = train_variant(args, variant)
        log.info("evaluating %s", trained["final"])
        metrics = evaluate_model(trained["final"], args, Path(trained["run_dir"]) / "eval")
        models[variant] = {"label": label, "model": trained["final"], "train_seconds": trained["seconds"],
                           "metrics": metrics}
    results = {"settings": settings, "models": models}
    atomic_write_json(out / "ablation.json", results)
    atomic_write_text(out / "ablation.md", markdown_report(results))
    plot_ablation({r["label"]: r["metrics"] for r in models.values()}, out / "ablation.png",
                  keys=[k for k, _ in COLUMNS], title=f"ablation: {shared.max_steps} steps x batch {shared.batch_size}")
    log.info("wrote %s, %s, %s", out / "ablation.json", out / "ablation.md", out / "ablation.png")
    return results


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    args = build_parser().parse_args(argv)
    results = run(args)
    print(markdown_report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
