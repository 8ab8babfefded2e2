"""Evaluate a CAFe model: retrieval, VQA, POPE hallucination and the modality gap.

The parts live apart: what is evaluated (eval_data), running the model (eval_tasks), scoring
(eval_metrics, pure functions), writing and printing results (eval_report); this module wires them.

    python -m training eval --model MODEL --data DATA_DIR [--json] [--out OUT_DIR]
        [--max-photos N] [--max-questions N] [--batch-size B] [--device auto|cpu|cuda] ...

DATA_DIR is either a sample-world album (`python -m data synth` output: ground_truth.json +
photos/) or any image-caption set that `data.dataset.open_dataset` reads (LLaVA JSON, JSONL/CSV
pairs, sidecar folder). On a sample-world album every metric is computed; on other sets only
retrieval and the modality gap (there, a text's relevant image is just its paired image).

In-process (trainer, ablation benchmark): ``evaluate(model, data_dir, EvalConfig(...)) -> dict``.
The dict is flat: numeric metrics plus one ``meta`` dict (model, data, kind, split, seconds).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from data.errors import DataFormatError
from data.synth import GROUND_TRUTH_FILE

from .eval_data import EvalSet, PhotoLoader, load_eval_set
from .eval_metrics import HEADLINE_METRICS
from .eval_report import EVAL_CHART, EVAL_JSON, MODALITY_PLOT, format_report, write_outputs
from .eval_tasks import answer_metrics, eval_mode, retrieval_metrics

log = logging.getLogger(__name__)

TASKS: tuple[str, ...] = ("retrieval", "vqa", "pope")


@dataclass
class EvalConfig:
    """What to evaluate and how much of it.

    max_questions caps the VQA questions and, separately, the POPE probes (deterministic sample,
    stratified by question type / probe kind); None = all. max_photos keeps the first N photos.
    """

    out_dir: Path | None = None  # eval.json + eval.png + modality_gap.png go here when set
    max_photos: int | None = None
    max_questions: int | None = 400
    batch_size: int | None = None  # embedding batch size; None = the model's
    tasks: tuple[str, ...] = TASKS
    max_new_tokens: int = 16  # short answers ("a small red circle" is the longest)
    describe_max_new_tokens: int = 64
    max_side: int | None = 1536  # decode big photos at reduced size; models resize far below this
    seed: int = 0
    progress: bool = True  # progress bars on stderr
    scatter_lines: int = 12  # pairs joined by a line in the modality-gap scatter
    scatter_max_points: int = 600  # per modality, so the PNG stays readable on large sets

    def __post_init__(self):
        for name in ("max_photos", "max_questions", "batch_size"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {v!r}")
        if self.max_new_tokens < 1 or self.describe_max_new_tokens < 1:
            raise ValueError("max_new_tokens and describe_max_new_tokens must be >= 1")
        self.tasks = tuple(self.tasks)
        unknown = set(self.tasks) - set(TASKS)
        if unknown or not self.tasks:
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {self.tasks}")
        if self.out_dir is not None:
            self.out_dir = Path(self.out_dir)


# ---------------------------------------------------------------------------------------------
# The entry points
# ---------------------------------------------------------------------------------------------
def evaluate(model, data_dir: str | Path, cfg: EvalConfig | None = None) -> dict:
    """Evaluate ``model`` (a CafeModel) on DATA_DIR; see the module doc for what is measured.

    Returns a flat dict of numbers (recall, VQA, POPE, modality keys, n_* counts) plus
    ``meta`` = {model, data, kind, split, seconds}. With cfg.out_dir set, also writes
    eval.json (the same dict), eval.png (headline bars) and modality_gap.png there.
    """
    cfg = cfg or EvalConfig()
    t0 = time.perf_counter()
    es = load_eval_set(data_dir, cfg.max_photos)
    loader = PhotoLoader(es.image_paths, cfg.max_side)
    metrics: dict = {"n_photos": len(es.image_paths)}
    scatter = None
    with eval_mode(model):
        if "retrieval" in cfg.tasks:
            m, scatter = retrieval_metrics(model, es, loader, cfg)
            metrics.update(m)
        if es.kind == "world" and {"vqa", "pope"} & set(cfg.tasks):
            metrics.update(answer_metrics(model, es, loader, cfg))
        elif es.kind != "world" and {"vqa", "pope"} & set(cfg.tasks) and "retrieval" not in cfg.tasks:
            raise ValueError(f"{data_dir} is not a sample-world album (no {GROUND_TRUTH_FILE}): only retrieval can be evaluated there")
    metrics["n_unusable_photos"] = len(loader.failed)
    metrics["meta"] = {
        "model": getattr(model, "name", "<in-memory>"),
        "data": str(data_dir),
        "kind": es.kind,
        "split": es.split,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if cfg.out_dir is not None:
        write_outputs(metrics, cfg.out_dir, scatter, cfg)
    return metrics


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m training eval``."""
    p = argparse.ArgumentParser(prog="python -m training eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="hub id, local folder or tiny:<preset>")
    p.add_argument("--data", required=True, help="sample-world album (python -m data synth output) or image-caption set")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--out", type=Path, help=f"write {EVAL_JSON}, {EVAL_CHART} and {MODALITY_PLOT} here")
    p.add_argument("--max-photos", type=int, help="evaluate the first N photos only")
    p.add_argument("--max-questions", type=int, default=EvalConfig.max_questions,
                   help="cap on VQA questions and, separately, on POPE probes (stratified sample; 0 = all; "
                        "default %(default)s)")
    p.add_argument("--batch-size", type=int, help="embedding batch size")
    p.add_argument("--tasks", default=",".join(EvalConfig.tasks),
                   help="comma-separated subset of the tasks (default %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=EvalConfig.max_new_tokens,
                   help="for short answers (default %(default)s)")
    p.add_argument("--describe-max-new-tokens", type=int, default=EvalConfig.describe_max_new_tokens,
                   help='for "Describe the photo." answers (default %(default)s)')
    p.add_argument("--seed", type=int, default=EvalConfig.seed, help="seed of the question sample (default %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default %(default)s)")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16 (default %(default)s)")
    p.add_argument("--quantization", choices=["8bit", "4bit"], help="load the model quantized (needs bitsandbytes)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (``python -m training eval ...``); returns the exit code."""
    from cafe_core import CafeError, CafeModel

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["eval"]:  # tolerate being handed the sub-command name too
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        cfg = EvalConfig(
            out_dir=args.out,
            max_photos=args.max_photos,
            max_questions=args.max_questions or None,
            batch_size=args.batch_size,
            tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip()),
            max_new_tokens=args.max_new_tokens,
            describe_max_new_tokens=args.describe_max_new_tokens,
            seed=args.seed,
            progress=not args.no_progress,
        )
        if not Path(args.data).exists():
            raise DataFormatError(args.data, "no such file or folder")
        model = CafeModel.load(args.model, device=args.device, dtype=args.dtype, quantization=args.quantization,
                               batch_size=args.batch_size or 8)
        metrics = evaluate(model, args.data, cfg)
    except (CafeError, DataFormatError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(metrics) if args.json else format_report(metrics))
    if args.out:
        print(f"wrote {args.out / EVAL_JSON}, {args.out / EVAL_CHART}"
              + (f", {args.out / MODALITY_PLOT}" if "paired_cosine" in metrics else ""), file=sys.stderr)
    return 0


__all__ = ["EvalConfig", "EvalSet", "evaluate", "format_report", "load_eval_set", "main", "HEADLINE_METRICS"]

if __name__ == "__main__":
    sys.exit(main())
