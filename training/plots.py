"""Charts and tables of training runs and evaluations (matplotlib, Agg backend, PNGs written atomically).

- plot_training_curves: loss components, learning rate, throughput and eval metrics vs step, from metrics.jsonl;
- plot_eval: bar chart of the headline metrics of one evaluation;
- plot_modality_gap: 2-D PCA scatter of paired image and text embeddings (the CAFe paper's figure);
- plot_ablation: grouped bars, one bar per variant (CAFe / contrastive-only / LM-only) per metric;
- markdown_table: rows of metrics as a Markdown table (model card, README).
"""

from __future__ import annotations

import io
import json
import logging
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from data.atomic import atomic_write_bytes
from training.eval_metrics import HEADLINE_METRICS

log = logging.getLogger(__name__)

LOSS_KEYS: tuple[str, ...] = ("loss", "lm_loss", "con_loss")
EVAL_PREFIX = "eval/"
SMOOTHING = 0.9  # EMA factor of the smoothed loss curves
IMAGE_COLOR, TEXT_COLOR = "tab:blue", "tab:orange"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_png: str | Path) -> Path:
    """Render fig to PNG bytes and write them atomically (an interrupted run never leaves half a PNG)."""
    plt = _pyplot()
    out = Path(out_png)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())
    return out


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ---------------------------------------------------------------------------------------------
# Training curves
# ---------------------------------------------------------------------------------------------
def read_metrics_jsonl(path: str | Path) -> list[dict]:
    """Records of a trainer metrics.jsonl with a numeric `step`, sorted by step; for a step logged
    twice (a run resumed from an earlier checkpoint) the last record wins. Malformed lines (e.g. a
    half-written last line after a crash) are skipped with a warning."""
    by_step: dict[float, dict] = {}
    bad = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(rec, dict) and _is_number(rec.get("step")):
                by_step.setdefault(rec["step"], {}).update(rec)  # train and eval records of one step merge
            else:
                bad += 1
    if bad:
        log.warning("%s: skipped %d malformed line(s)", path, bad)
    return [by_step[s] for s in sorted(by_step)]


def ema(values: Sequence[float], factor: float = SMOOTHING) -> np.ndarray:
    """Bias-corrected exponential moving average (the first points are not pulled toward 0)."""
    out, avg = np.empty(len(values)), 0.0
    for i, v in enumerate(values):
        avg = factor * avg + (1 - factor) * v
        out[i] = avg / (1 - factor ** (i + 1))
    return out


def _series(records: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["step"], r[key]) for r in records if _is_number(r.get(key))]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_training_curves(metrics_jsonl: str | Path, out_png: str | Path, title: str | None = None) -> Path:
    """Loss components (raw + smoothed), learning rate, samples/s and eval/* metrics vs step.

    Panels without data are left out; raises ValueError when the file has no usable record.
    """
    records = read_metrics_jsonl(metrics_jsonl)
    if not records:
        raise ValueError(f"{metrics_jsonl}: no records with a numeric 'step'")
    loss_keys = [k for k in LOSS_KEYS if _series(records, k)[0]]
    eval_keys = sorted({k for r in records for k, v in r.items() if k.startswith(EVAL_PREFIX) and _is_number(v)})
    panels = [p for p, keys in (("loss", loss_keys), ("lr", ["lr"]), ("samples_per_s", ["samples_per_s"]),
                                ("eval", eval_keys)) if any(_series(records, k)[0] for k in keys)]
    if not panels:
        raise ValueError(f"{metrics_jsonl}: no loss, lr, samples_per_s or {EVAL_PREFIX}* values to plot")
    plt = _pyplot()
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.6 * len(panels)), sharex=True, squeeze=False, layout="constrained")
    for ax, panel in zip(axes[:, 0], panels):
        if panel == "loss":
            for i, k in enumerate(loss_keys):
                x, y = _series(records, k)
                color = f"C{i}"
                ax.plot(x, y, color=color, alpha=0.25, linewidth=0.8)
                ax.plot(x, ema(y), color=color, label=f"{k} (smoothed)")
            ax.set_ylabel("loss")
            ax.legend(fontsize=8)
        elif panel == "eval":
            for k in eval_keys:
                x, y = _series(records, k)
                ax.plot(x, y, marker="o", markersize=3, label=k[len(EVAL_PREFIX):])
            ax.set_ylabel("eval")
            ax.legend(fontsize=7, ncol=2)
        else:
            x, y = _series(records, panel)
            ax.plot(x, y, color="C3" if panel == "lr" else "C4")
            ax.set_ylabel(panel)
            if panel == "lr":
                ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(title or f"training: {Path(metrics_jsonl).parent.name or metrics_jsonl}")
    return _save(fig, out_png)


# ---------------------------------------------------------------------------------------------
# Evaluation charts
# ---------------------------------------------------------------------------------------------
def _present(keys: Sequence[str], tables: Sequence[Mapping]) -> list[str]:
    return [k for k in keys if any(_is_number(t.get(k)) for t in tables)]


def eval_bars(metrics: Mapping, keys: Sequence[str] = HEADLINE_METRICS) -> list[tuple[str, float]]:
    """(key, value) of each of ``keys`` that ``metrics`` holds as a number, in the order of ``keys``."""
    return [(k, float(metrics[k])) for k in _present(keys, [metrics])]


def plot_eval(metrics: Mapping, out_png: str | Path, keys: Sequence[str] = HEADLINE_METRICS, title: str | None = None) -> Path:
    """Horizontal bars of the headline metrics present in ``metrics`` (an evaluate() result); negative
    values in red."""
    bars = eval_bars(metrics, keys)
    if not bars:
        raise ValueError("no headline metric to plot")
    keys, values = [k for k, _ in bars], [v for _, v in bars]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.38 * len(keys) + 1.2))
    y = np.arange(len(keys))[::-1]
    ax.barh(y, values, color=["C3" if v < 0 else "C0" for v in values])
    for yi, v in zip(y, values):
        ax.text(max(v, 0) + 0.01, yi, f"{v:.3f}", va="center", fontsize=8)
    ax.set_yticks(y, keys, fontsize=8)
    ax.set_xlim(min(0.0, min(values) - 0.05), 1.1)
    ax.axvline(0, color="black", linewidth=0.6)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title or "evaluation", fontsize=10)
    return _save(fig, out_png)


def pca_2d(x: np.ndarray) -> np.ndarray:
    """(N, d) -> (N, 2) projection on the two main principal axes of x (centred)."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(0, keepdims=True)
    if len(x) < 2:
        return np.zeros((len(x), 2))
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    proj = x @ vt[:2].T
    return np.pad(proj, ((0, 0), (0, 2 - proj.shape[1])))  # rank-1 input: pad the missing axis with 0


def plot_modality_gap(
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    out_png: str | Path,
    pairs: Sequence[tuple[int, int]] | None = None,
    n_lines: int = 12,
    max_points: int = 600,
    title: str | None = None,
    seed: int = 0,
) -> Path:
    """Scatter of a 2-D PCA over the union of image and text embeddings; images and texts in two
    colours, ``n_lines`` (image, text) pairs joined by a line. pairs defaults to (i, i)."""
    image_emb, text_emb = np.asarray(image_emb), np.asarray(text_emb)
    if pairs is None:
        if len(image_emb) != len(text_emb):
            raise ValueError("pairs are needed when the numbers of images and texts differ")
        pairs = [(i, i) for i in range(len(image_emb))]
    rng = np.random.default_rng(seed)
    keep_i = np.sort(rng.permutation(len(image_emb))[:max_points])
    keep_t = np.sort(rng.permutation(len(text_emb))[:max_points])
    xy = pca_2d(np.concatenate([image_emb[keep_i], text_emb[keep_t]]))
    img_xy, txt_xy = xy[: len(keep_i)], xy[len(keep_i):]
    pos_i = {int(i): n for n, i in enumerate(keep_i)}
    pos_t = {int(t): n for n, t in enumerate(keep_t)}
    shown = [(pos_i[i], pos_t[t]) for i, t in pairs if i in pos_i and t in pos_t]
    lines = [shown[j] for j in np.sort(rng.permutation(len(shown))[:n_lines])]

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5.5))
    for a, b in lines:
        ax.plot([img_xy[a, 0], txt_xy[b, 0]], [img_xy[a, 1], txt_xy[b, 1]], color="gray", linewidth=0.7, alpha=0.8, zorder=1)
    ax.scatter(img_xy[:, 0], img_xy[:, 1], s=14, color=IMAGE_COLOR, label=f"images ({len(keep_i)})", zorder=2)
    ax.scatter(txt_xy[:, 0], txt_xy[:, 1], s=14, color=TEXT_COLOR, marker="^", label=f"texts ({len(keep_t)})", zorder=2)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend(fontsize=8)
    ax.set_title(title or "paired image/text embeddings (PCA)", fontsize=10)
    ax.grid(alpha=0.3)
    return _save(fig, out_png)


def plot_ablation(table: Mapping[str, Mapping], out_png: str | Path, keys: Sequence[str] = HEADLINE_METRICS,
                  title: str | None = None) -> Path:
    """Grouped bars: one group per metric, one bar per variant (``table`` = {variant: metrics}).
    Metrics no variant reports are left out."""
    if not table:
        raise ValueError("plot_ablation needs at least one variant")
    keys = _present(keys, list(table.values()))
    if not keys:
        raise ValueError("no metric of keys is reported by any variant")
    plt = _pyplot()
    n = len(table)
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(7, 0.9 * len(keys) * max(1, n / 2)), 4.2))
    x = np.arange(len(keys))
    for j, (variant, metrics) in enumerate(table.items()):
        vals = [float(metrics[k]) if _is_number(metrics.get(k)) else np.nan for k in keys]
        ax.bar(x + (j - (n - 1) / 2) * width, vals, width, label=variant, color=f"C{j}")
    ax.set_xticks(x, keys, rotation=35, ha="right", fontsize=8)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_ylim(min(0.0, *(float(m[k]) - 0.05 for m in table.values() for k in keys if _is_number(m.get(k)))), 1.05)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "ablation", fontsize=10)
    return _save(fig, out_png)


def markdown_table(rows: Mapping[str, Mapping], keys: Sequence[str], digits: int = 3) -> str:
    """A Markdown table with one row per entry of ``rows`` and one column per key; floats with
    ``digits`` decimals, missing values as "–"."""

    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:.{digits}f}" if math.isfinite(v) else "–"
        return "–" if v is None else str(v).replace("|", "\\|")

    header = "| | " + " | ".join(k.replace("|", "\\|") for k in keys) + " |"
    sep = "|---|" + "---:|" * len(keys)
    body = [f"| {cell(name)} | " + " | ".join(cell(r.get(k)) for k in keys) + " |" for name, r in rows.items()]
    return "\n".join([header, sep, *body])
