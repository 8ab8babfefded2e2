"""benchmarks/lm_memory.py at a small shape: both variants give the same loss, and full-sequence logits cost
about their size in memory while the supervised-rows loss does not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_full_logits_cost_their_size_and_the_supervised_loss_does_not(tmp_path):
    out = tmp_path / "lm_memory.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "lm_memory.py"), "--hidden", "32", "--vocab",
                           "40000", "--tokens", "600", "--supervised", "8", "--dtype", "float32", "--out", str(out)],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["same_loss"] and r["full_logits_bytes"] == 2 * 600 * 40000 * 4
    logits_mib = r["full_logits_bytes"] / 2**20  # 183 MiB
    assert r["full_logits"]["added_mib"] > logits_mib  # the logits and their gradient are held at once
    assert r["supervised_only"]["added_mib"] < logits_mib / 4
