"""Plot and table helpers: real matplotlib PNGs from hand-made metrics, checked for content."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from training.eval_metrics import HEADLINE_METRICS
from training.plots import (
    ema,
    eval_bars,
    markdown_table,
    pca_2d,
    plot_ablation,
    plot_eval,
    plot_modality_gap,
    plot_training_curves,
    read_metrics_jsonl,
)


def _png(path) -> Image.Image:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im = im.convert("L")
    assert np.asarray(im).std() > 5, "the image is blank"
    return im


def _metrics_jsonl(path, steps=60):
    lines = []
    for s in range(1, steps + 1):
        lines.append({"step": s, "epoch": s / steps, "loss": 3 / s + 0.1, "lm_loss": 2 / s, "con_loss": 1 / s + 0.1,
                      "lr": 1e-4 * min(1, s / 5), "samples_per_s": 12.5})
        if s % 20 == 0:
            lines.append({"step": s, "eval/t2i_recall@1": s / 100, "eval/vqa_accuracy": s / 200})
    text = "".join(json.dumps(r) + "\n" for r in lines)
    # A resumed run logs steps 59-60 again (the last record wins), then a crash cuts a line in half.
    text += json.dumps({"step": 60, "loss": 0.05, "lm_loss": 0.01, "con_loss": 0.04}) + "\n" + '{"step": 61, "lo'
    path.write_text(text)
    return path


def test_read_metrics_jsonl_merges_steps_and_skips_broken_lines(tmp_path, caplog):
    recs = read_metrics_jsonl(_metrics_jsonl(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in recs] == list(range(1, 61))
    assert recs[-1]["loss"] == 0.05 and recs[-1]["lr"] == pytest.approx(1e-4)  # re-logged loss wins, lr kept
    assert recs[19]["eval/t2i_recall@1"] == pytest.approx(0.2) and recs[19]["loss"] == pytest.approx(0.25)
    assert "skipped 1 malformed" in caplog.text


def test_plot_training_curves(tmp_path):
    out = plot_training_curves(_metrics_jsonl(tmp_path / "metrics.jsonl"), tmp_path / "curves.png")
    im = _png(out)
    assert im.height > 4 * 150  # four panels: loss, lr, samples/s, eval
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left nothing behind


def test_plot_training_curves_needs_records(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no records"):
        plot_training_curves(tmp_path / "empty.jsonl", tmp_path / "x.png")
    (tmp_path / "nothing.jsonl").write_text('{"step": 1, "epoch": 0}\n')
    with pytest.raises(ValueError, match="no loss"):
        plot_training_curves(tmp_path / "nothing.jsonl", tmp_path / "x.png")


def test_ema_is_bias_corrected():
    assert ema([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])
    assert ema([0.0, 1.0], factor=0.5) == pytest.approx([0.0, 0.5 / 0.75])


def test_pca_2d_recovers_the_main_axis():
    rng = np.random.default_rng(0)
    direction = rng.normal(size=8)
    direction /= np.linalg.norm(direction)
    t = np.linspace(-3, 3, 20)
    xy = pca_2d(t[:, None] * direction + 5.0)
    assert np.abs(xy[:, 1]).max() < 1e-9  # collinear points: no second component
    assert np.abs(np.abs(xy[:, 0]) - np.abs(t)).max() < 1e-9  # distances along the line preserved


METRICS = {"t2i_object_recall@1": 0.5, "t2i_recall@1": 0.25, "t2i_recall@5": 0.75, "i2t_recall@1": 0.3,
           "i2t_recall@5": 0.8, "vqa_accuracy": 0.6, "pope_random_accuracy": 0.9, "pope_popular_accuracy": 0.85,
           "pope_adversarial_accuracy": 0.7, "pope_adversarial_f1": 0.72, "modality_gap": -0.05,
           "meta": {"model": "m"}}


def test_eval_bars_are_the_present_headline_numbers_in_order():
    bars = eval_bars({**METRICS, "vqa_accuracy": "n/a", "extra": 0.1})
    assert [k for k, _ in bars] == [k for k in HEADLINE_METRICS if k in METRICS and k != "vqa_accuracy"]
    assert dict(bars)["modality_gap"] == -0.05 and dict(bars)["t2i_recall@1"] == 0.25


def _red_pixels(im: Image.Image) -> int:
    rgb = np.asarray(im.convert("RGB")).astype(int)
    return int(((rgb[..., 0] > 180) & (rgb[..., 1] < 100) & (rgb[..., 2] < 100)).sum())


def test_plot_eval_draws_one_bar_per_metric_and_negatives_in_red(tmp_path):
    full = Image.open(plot_eval(METRICS, tmp_path / "eval.png", title="tiny"))
    _png(tmp_path / "eval.png")
    positive = {k: v for k, v in METRICS.items() if k != "modality_gap"}
    few = Image.open(plot_eval(dict(list(positive.items())[:3]), tmp_path / "few.png"))
    assert full.height > few.height * 1.8  # height follows the number of bars (11 vs 3)
    assert _red_pixels(full) > 50  # the negative modality gap is drawn in red
    assert _red_pixels(Image.open(plot_eval(positive, tmp_path / "pos.png"))) == 0
    with pytest.raises(ValueError):
        plot_eval({"meta": {}}, tmp_path / "none.png")


def test_plot_modality_gap(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.normal(size=(30, 16)) + 2.0
    txt = rng.normal(size=(40, 16)) - 2.0
    pairs = [(i % 30, i) for i in range(40)]
    _png(plot_modality_gap(img, txt, tmp_path / "gap.png", pairs=pairs, n_lines=5, max_points=25))
    with pytest.raises(ValueError, match="pairs"):
        plot_modality_gap(img, txt, tmp_path / "bad.png")


def test_plot_ablation(tmp_path):
    table = {"CAFe": METRICS, "contrastive-only": {**METRICS, "vqa_accuracy": 0.0},
             "LM-only": {k: v for k, v in METRICS.items() if "recall" not in k}}
    im = _png(plot_ablation(table, tmp_path / "ablation.png"))
    assert im.width > im.height
    with pytest.raises(ValueError):
        plot_ablation({}, tmp_path / "x.png")


def test_markdown_table():
    rows = {"CAFe": {"t2i_recall@1": 0.51234, "vqa_accuracy": 0.6, "n": 12}, "LM-only": {"vqa_accuracy": 0.65}}
    assert markdown_table(rows, ["t2i_recall@1", "vqa_accuracy", "n"]) == (
        "| | t2i_recall@1 | vqa_accuracy | n |\n"
        "|---|---:|---:|---:|\n"
        "| CAFe | 0.512 | 0.600 | 12 |\n"
        "| LM-only | – | 0.650 | – |"
    )
