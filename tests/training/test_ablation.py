"""benchmarks/ablation.py end to end on a tiny budget (tiny:llava base, 3 steps per variant, 40 training
photos, 8 test photos): three trainer processes with the same data, budget and seed but different
losses, every model evaluated, JSON + Markdown + chart written, finished runs reused on a rerun."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess

import pytest
import yaml

from .conftest import PYTHON, REPO, child_env, read_metrics

STEPS, BATCH = 3, 4


def _load_ablation():
    spec = importlib.util.spec_from_file_location("ablation", REPO / "benchmarks" / "ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ablation_run(train_data, eval_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("ablation")
    argv = ["--base", "tiny:llava", "--data", str(train_data), "--test-data", str(eval_data), "--steps", str(STEPS),
            "--batch-size", str(BATCH), "--eval-max-questions", "6", "--eval-max-photos", "8",
            "--runs-dir", str(root / "runs"), "--out", str(root / "results"), "--device", "cpu",
            "--set", "image_max_side=96", "--set", "save_every=0"]
    proc = subprocess.run([PYTHON, str(REPO / "benchmarks" / "ablation.py"), *argv], cwd=root, env=child_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {"root": root, "argv": argv, "stdout": proc.stdout}


def test_ablation_trains_three_variants_alike(ablation_run, train_data):
    runs = ablation_run["root"] / "runs"
    configs = {v: yaml.safe_load((runs / v / "config.yaml").read_text()) for v in ("cafe", "contrastive", "lm")}
    for variant, cfg in configs.items():
        assert cfg["loss"] == variant and cfg["base_model"] == "tiny:llava" and cfg["data"] == str(train_data)
        assert (cfg["max_steps"], cfg["batch_size"], cfg["eval_data"]) == (STEPS, BATCH, "")
    # Same everything but the loss (and the output folder).
    strip = lambda c: {k: v for k, v in c.items() if k not in ("loss", "out_dir")}  # noqa: E731
    assert strip(configs["cafe"]) == strip(configs["contrastive"]) == strip(configs["lm"])
    logged = {v: read_metrics(runs / v) for v in configs}
    assert all(len(r) == STEPS for r in logged.values())
    assert {"lm_loss", "con_loss"} <= logged["cafe"][0].keys()
    assert "lm_loss" not in logged["contrastive"][0] and "con_loss" in logged["contrastive"][0]
    assert "con_loss" not in logged["lm"][0] and "lm_loss" in logged["lm"][0]
    # Same first batch from the same base: the shared components agree at step 1.
    assert logged["cafe"][0]["con_loss"] == pytest.approx(logged["contrastive"][0]["con_loss"], abs=1e-5)
    assert logged["cafe"][0]["lm_loss"] == pytest.approx(logged["lm"][0]["lm_loss"], abs=1e-5)


def test_ablation_writes_json_markdown_and_chart(ablation_run, eval_data):
    results_dir = ablation_run["root"] / "results"
    results = json.loads((results_dir / "ablation.json").read_text())
    assert set(results["models"]) == {"base", "cafe", "contrastive", "lm"}
    assert results["settings"]["steps"] == STEPS and results["settings"]["batch_size"] == BATCH
    for name, r in results["models"].items():
        m = r["metrics"]
        assert m["meta"]["data"] == str(eval_data) and m["n_photos"] == 8
        for key in ("t2i_recall@1", "i2t_recall@1", "vqa_accuracy", "pope_adversarial_f1"):
            assert 0.0 <= m[key] <= 1.0, (name, key)
        assert -2.0 <= m["modality_gap"] <= 2.0 and m["modality_centroid_distance"] >= 0.0
        assert (r["train_seconds"] is None) == (name == "base")
        if name != "base":
            assert r["train_seconds"] > 0
    md = (results_dir / "ablation.md").read_text()
    assert "| | t2i R@1 | i2t R@1 | VQA acc | POPE F1 (adv) | modality gap (centroid dist.) |" in md
    for label in ("base (no fine-tuning)", "CAFe (LM + contrastive)", "contrastive only", "LM only"):
        row = next(line for line in md.splitlines() if line.startswith(f"| {label} |"))
        t2i = results["models"][{"base (no fine-tuning)": "base", "CAFe (LM + contrastive)": "cafe",
                                 "contrastive only": "contrastive", "LM only": "lm"}[label]]["metrics"]["t2i_recall@1"]
        assert row.split("|")[2].strip() == f"{t2i:.3f}"
    assert "retrieval, CAFe − contrastive-only" in md and md in ablation_run["stdout"]
    png = (results_dir / "ablation.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_rerun_reuses_finished_runs(ablation_run):
    ablation = _load_ablation()
    args = ablation.build_parser().parse_args(ablation_run["argv"])
    run_dir = ablation_run["root"] / "runs" / "lm"
    before = (run_dir / "metrics.jsonl").stat().st_mtime_ns
    cwd = os.getcwd()
    os.chdir(ablation_run["root"])
    try:
        trained = ablation.train_variant(args, "lm")
    finally:
        os.chdir(cwd)
    assert (run_dir / "metrics.jsonl").stat().st_mtime_ns == before  # nothing retrained
    assert trained["seconds"] == json.loads((run_dir / ablation.TRAIN_STATE).read_text())["seconds"]
