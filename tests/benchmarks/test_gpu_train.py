"""benchmarks/gpu_train.py at tiny size on CPU (so the GPU script cannot rot): the sweep's settings, the MFU
and floor ratios computed from the counted FLOPs, the time budget, and gradient checkpointing really
recomputing the layers."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_train.py"


def _run(tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / "gpu_train.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(out), *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_tiny_cpu_run_reports_every_setting_with_consistent_ratios(tmp_path):
    r = _run(tmp_path, "--peak-tflops", "0.5")
    assert r["model"] == "tiny:llava-onevision" and r["peak_tflops"] == 0.5
    settings = [(t["grad_checkpointing"], t["batch_size"]) for t in r["train"]]
    assert settings == [(False, 2), (False, 4), (True, 2), (True, 4)] and r["skipped"] == []
    for t in r["train"]:
        assert t["steps"] == 2 and t["losses_finite"] and t["samples_per_s"] > 0 and t["peak_memory_gib"] > 0
        assert t["flops_per_sample"] > 0
        # MFU = FLOPs per sample x samples/s / peak
        assert t["mfu"] == pytest.approx(t["flops_per_sample"] * t["samples_per_s"] / 0.5e12, rel=1e-6)
        assert t["mfu"] == pytest.approx(t["achieved_tflops"] / 0.5, rel=1e-6)
    assert r["best_train"]["samples_per_s"] == max(t["samples_per_s"] for t in r["train"])
    native, base = r["index"]["native"], r["index"]["base"]
    assert base["flops_per_photo"] < native["flops_per_photo"]
    for ix in (native, base):
        assert ix["finite"] and ix["photos"] == 4 and ix["model_photos_per_s"] > 0
        # fraction of the FLOP floor = (FLOPs / peak) / seconds
        assert ix["floor_s"] == pytest.approx(ix["flops_per_photo"] * ix["photos"] / 0.5e12)
        assert ix["of_floor"] == pytest.approx(ix["floor_s"] * ix["photos_per_s"] / ix["photos"], rel=1e-6)
        assert ix["model_of_floor"] == pytest.approx(ix["floor_s"] * ix["model_photos_per_s"] / ix["photos"], rel=1e-6)
    assert set(r["meets_targets"]) == {"train_mfu", "index_of_floor"}
    assert r["meets_targets"]["train_mfu"] is (r["best_train"]["mfu"] >= 0.35)


def test_time_budget_skips_settings_and_still_reports(tmp_path):
    r = _run(tmp_path, "--time-budget", "0", "--checkpointing", "on")
    assert r["train"] == [] and r["best_train"] is None and r["peak_tflops"] == "unknown"
    assert [(s["grad_checkpointing"], s["batch_size"], s["reason"]) for s in r["skipped"]] == [
        (True, 2, "time budget"), (True, 4, "time budget")]
    assert r["index"]["native"]["of_floor"] is None and r["index"]["native"]["photos_per_s"] > 0


def test_gradient_checkpointing_recomputes_the_layers():
    """With checkpointing on, each language-model layer runs again in the backward pass (counted inside the
    layer: transformers checkpoints the layer's forward, and module hooks do not run in the recompute)."""
    import torch

    from benchmarks.flops import shape_from_config
    from benchmarks.gpu_train import Sweep, parse_args
    from benchmarks.train_step import make_samples
    from cafe_core.family import family_for
    from cafe_core.inputs import PromptEncoder
    from cafe_core.tiny import build_tiny

    args = parse_args(["--device", "cpu", "--tiny", "--dtype", "float32"])
    model, processor = build_tiny("llava-onevision")
    samples, _ = make_samples(4, 0)
    sweep = Sweep(model, PromptEncoder(processor, family_for(model.config)), samples, shape_from_config(model.config),
                  torch.device("cpu"), args, deadline=math.inf)
    calls = []
    mlp = model.model.language_model.layers[0].mlp
    forward = mlp.forward

    def counted(*a, **k):  # module hooks do not run in the recompute, the module's forward does
        calls.append(1)
        return forward(*a, **k)

    mlp.forward = counted
    counts = {}
    for checkpointing in (False, True):
        calls.clear()
        result = sweep.run(checkpointing, 2)
        assert result["losses_finite"]
        counts[checkpointing] = len(calls)
    assert counts[True] == 2 * counts[False] > 0
