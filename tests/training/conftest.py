"""Shared fixtures of the trainer tests: a small sample-world album, a saved tiny base model, and helpers
that run the trainer as a real process (``python -m training train``) or in-process (``Trainer``).

Sizes are tiny on purpose (40 photos, batch 4, a handful of steps): every test here must run on a
2-core CPU in seconds.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cafe_core.tiny import save_tiny
from data.synth import write_album

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

# The settings every small run shares: tiny model, 40-photo album, sample-world recipe, batch 4.
BASE_SETTINGS = {
    "base_model": "tiny:llava",
    "augment": "sampleworld",
    "max_qa_turns": 2,
    "caption_turn_prob": 0.5,
    "image_max_side": 96,
    "batch_size": 4,
    "lr": 1e-3,
    "vision_lr": 1e-3,
    "warmup_ratio": 0.0,
    "schedule": "cosine",
    "precision": "fp32",
    "device": "cpu",
    "log_every": 1,
    "save_every": 0,
    "seed": 0,
}


def child_env() -> dict:
    """Environment of trainer subprocesses: the repo importable, telemetry off, no hub access."""
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
            "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}


def settings(data: Path, out_dir: Path, **overrides) -> dict:
    """BASE_SETTINGS + data/out_dir + overrides, as a dict of config keys."""
    return {**BASE_SETTINGS, "data": str(data), "out_dir": str(out_dir), **overrides}


def set_args(values: dict) -> list[str]:
    """``--set key=value`` arguments for the CLI."""
    args = []
    for k, v in values.items():
        args += ["--set", f"{k}={json.dumps(v) if isinstance(v, dict) else v}"]
    return args


def run_benchmark(script: str, args: list[str], timeout: int = 300) -> dict:
    """``benchmarks/<script>`` ARGS as a real process; its JSON output (the run must succeed)."""
    proc = subprocess.run([PYTHON, str(REPO / "benchmarks" / script), *args], cwd=REPO, env=child_env(),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def run_cli(args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    """``python -m training <args>`` as a real process."""
    return subprocess.run([PYTHON, "-m", "training", *args], cwd=REPO, env=child_env(), capture_output=True,
                          text=True, timeout=timeout)


def train_in_process(values: dict, resume: bool = False):
    """Build a Trainer from config keys and run it; returns the Trainer (model, optimizer, out dir)."""
    from training.config import load_config
    from training.trainer import Trainer

    cfg = load_config(None, [f"{k}={json.dumps(v) if isinstance(v, dict) else v}" for k, v in values.items()])
    trainer = Trainer(cfg, resume=resume)
    trainer.final = trainer.train()
    return trainer


def read_metrics(out_dir: Path) -> list[dict]:
    path = Path(out_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def folder_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of a saved model folder (single-file safetensors, as tiny models are)."""
    return folder_weights_named(folder, "model.safetensors")


def folder_weights_named(folder: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / name))


def max_abs_diff(a: dict, b: dict) -> float:
    keys = set(a) & set(b)
    assert keys, "no common tensors"
    return max((a[k].float() - b[k].float()).abs().max().item() for k in keys)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def train_data(tmp_path_factory) -> Path:
    """A 40-photo sample-world training album (photos, llava.json, ground_truth.json)."""
    out = tmp_path_factory.mktemp("train_album")
    write_album(out, n=40, seed=11, split="train", short_side=96)
    return out


@pytest.fixture(scope="session")
def eval_data(tmp_path_factory) -> Path:
    """An 8-photo test album for the end-of-training evaluation."""
    out = tmp_path_factory.mktemp("eval_album")
    write_album(out, n=8, seed=12, split="test", short_side=96)
    return out


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """tiny:llava saved as a folder (QLoRA quantizes saved checkpoints only). Same weights as tiny:llava."""
    return save_tiny(tmp_path_factory.mktemp("tiny_base") / "llava", "llava", seed=0)
