"""An evaluation's outputs: eval.json, eval.png and modality_gap.png, and the plain-text table."""

from __future__ import annotations

from pathlib import Path

from data.atomic import atomic_write_json
from data.vocab import QTYPES

from .eval_metrics import (
    KS,
    POPE_SPLITS,
    POPE_STATS,
    RETRIEVAL_KINDS,
    pope_count_key,
    pope_key,
    recall_key,
    vqa_count_key,
    vqa_key,
)

EVAL_JSON = "eval.json"
EVAL_CHART = "eval.png"
MODALITY_PLOT = "modality_gap.png"


def write_outputs(metrics: dict, out_dir: Path, scatter: tuple | None, cfg) -> None:
    """eval.json, eval.png and (when embeddings are given) modality_gap.png in out_dir, each atomically."""
    from training.plots import plot_eval, plot_modality_gap

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / EVAL_JSON, metrics)
    meta = metrics.get("meta", {})
    title = f"{Path(str(meta.get('model', 'model'))).name} on {Path(str(meta.get('data', ''))).name}"
    plot_eval(metrics, out_dir / EVAL_CHART, title=title)
    if scatter is not None:
        img, txt, pairs = scatter
        plot_modality_gap(img, txt, out_dir / MODALITY_PLOT, pairs=pairs, n_lines=cfg.scatter_lines,
                          max_points=cfg.scatter_max_points, title=f"paired embeddings (PCA): {title}", seed=cfg.seed)


def _fmt(v) -> str:
    return "   -  " if v is None else (f"{v:6.3f}" if isinstance(v, float) else f"{v:6d}")


def format_report(metrics: dict) -> str:
    """A readable plain-text table of an evaluate() result."""
    meta = metrics.get("meta", {})
    g = metrics.get
    lines = [f"model {meta.get('model')}  data {meta.get('data')}  ({meta.get('kind')}"
             + (f", split {meta['split']}" if meta.get("split") else "") + f", {g('n_photos')} photos, {meta.get('seconds')} s)"]
    if recall_key("t2i", 1) in metrics:
        lines += ["", "Retrieval          " + "".join(f"  R@{k:<4}" for k in KS) + "  queries"]
        for kind, name, n in RETRIEVAL_KINDS:
            if recall_key(kind, 1) in metrics:
                lines.append(f"  {name:<17}" + "".join(f"  {_fmt(g(recall_key(kind, k)))}" for k in KS) + f"  {g(n)}")
    if "paired_cosine" in metrics:
        lines += ["", f"Modality  paired cos {g('paired_cosine'):.3f}  unpaired cos {g('unpaired_cosine'):.3f}  "
                      f"gap {g('modality_gap'):+.3f}  centroid distance {g('modality_centroid_distance'):.3f}"]
    if "vqa_accuracy" in metrics:
        lines += ["", f"VQA accuracy {g('vqa_accuracy'):.3f} (macro {g('vqa_macro_accuracy'):.3f}, n={g('n_vqa')})"]
        for qt in QTYPES:
            if vqa_key(qt) in metrics:
                lines.append(f"  {qt:<17} {_fmt(g(vqa_key(qt)))}  n={g(vqa_count_key(qt))}")
    if "describe_accuracy" in metrics:
        lines.append(f"  {'describe':<17} {_fmt(g('describe_accuracy'))}  n={g('n_describe')}  (object F1 "
                     f"{g('describe_object_f1'):.3f}, background {g('describe_background_accuracy'):.3f})")
    if any(pope_key(s, "accuracy") in metrics for s in POPE_SPLITS):
        lines += ["", "POPE          " + "".join(f"{c:>10}" for c in POPE_STATS) + "       n"]
        for s in POPE_SPLITS:
            if pope_key(s, "accuracy") in metrics:
                lines.append(f"  {s:<12}" + "".join(f"    {_fmt(g(pope_key(s, c)))}" for c in POPE_STATS)
                             + f"  {g(pope_count_key(s)):6d}")
        lines.append(f"  unparsed answers (neither yes nor no): {g('pope_unparsed_ratio'):.3f}")
    return "\n".join(lines)
