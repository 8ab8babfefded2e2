"""Multi-process training on CPU (gloo): DDP ranks end with identical weights, contrastive negatives are
gathered across ranks, and FSDP (PyTorch's fully_shard) runs through ``torchrun -m training train``
with the same result as DDP and resumes exactly.

Data order: rank r of W reads records r, r+W, r+2W, ... of the epoch order, so with batch 4 on 2 ranks
the first step's union batch is exactly the 8 records a single process reads with batch 8. InfoNCE is
invariant to a consistent permutation of the pairs, so the gathered loss at step 1 must equal the
single-process batch-8 loss. (The gradient scaling of the gather is tested in tests/cafe_core.)
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import torch

from training.config import load_config
from training.modes import ModeUnavailable, preflight

from . import dist_train_worker
from .conftest import (
    REPO,
    TORCHRUN,
    child_env,
    folder_weights,
    free_port,
    max_abs_diff,
    read_metrics,
    set_args,
    settings,
    train_in_process,
)

WORLD = 2
STEPS = 3


def _dist_settings(train_data, out, **kw) -> dict:
    return settings(train_data, out, max_steps=STEPS, save_every=2, threads=1, **kw)


def _torchrun(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [TORCHRUN, "--nproc_per_node", str(WORLD), "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           *args]
    return subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def ddp_run(train_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    values = _dist_settings(train_data, root / "run")
    proc = _torchrun([dist_train_worker.__file__, str(root), *(f"{k}={v}" for k, v in values.items())])
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    ranks = [json.loads((root / f"rank{r}.json").read_text()) for r in range(WORLD)]
    states = [torch.load(root / f"rank{r}.pt") for r in range(WORLD)]
    return {"out": root / "run", "ranks": ranks, "states": states}


def test_ddp_ranks_end_with_identical_weights_equal_to_the_final_folder(ddp_run, tiny_base):
    ranks, states = ddp_run["ranks"], ddp_run["states"]
    assert [r["world"] for r in ranks] == [WORLD, WORLD]
    assert all(r["wrapper"] == "DistributedDataParallel" for r in ranks)
    assert ranks[0]["final"] == str(ddp_run["out"] / "final") and ranks[1]["final"] is None
    # Each rank saw different samples; only the gradient all-reduce can keep them bit-identical.
    assert states[0].keys() == states[1].keys()
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k
    # The exported folder holds those weights (loaded the way users load it).
    from transformers import AutoModelForImageTextToText

    loaded = AutoModelForImageTextToText.from_pretrained(ddp_run["out"] / "final").state_dict()
    assert max_abs_diff(loaded, states[0]) == 0.0
    assert max_abs_diff(folder_weights(ddp_run["out"] / "final"), folder_weights(tiny_base)) > 1e-4
    records = read_metrics(ddp_run["out"])
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))  # rank 0 logs, once per step


def test_contrastive_negatives_are_gathered_across_ranks(ddp_run, train_data, tmp_path):
    dist_con = read_metrics(ddp_run["out"])[0]["con_loss"]
    union = train_in_process(settings(train_data, tmp_path / "b8", batch_size=8, max_steps=1))
    local = train_in_process(settings(train_data, tmp_path / "b4", batch_size=4, max_steps=1))
    union_con, local_con = read_metrics(union.out)[0]["con_loss"], read_metrics(local.out)[0]["con_loss"]
    # Same 8 pairs, 7 negatives each: the gathered 2 x 4 loss is the single-process loss over 8.
    assert dist_con == pytest.approx(union_con, abs=1e-4)
    # And not a per-rank loss over 4 pairs (3 negatives): InfoNCE grows with the number of negatives.
    assert abs(dist_con - local_con) > 0.1


@pytest.fixture(scope="module")
def fsdp_run(train_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp") / "run"
    values = _dist_settings(train_data, out, distributed="fsdp")
    proc = _torchrun(["-m", "training", "train", *set_args(values)])
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert f"final model: {out / 'final'}" in proc.stdout
    return {"out": out, "values": values}


def test_fsdp_runs_on_cpu_and_matches_ddp(fsdp_run, ddp_run):
    out = fsdp_run["out"]
    for a, b in zip(read_metrics(ddp_run["out"]), read_metrics(out)):
        for key in ("loss", "lm_loss", "con_loss", "lr"):
            assert b[key] == pytest.approx(a[key], abs=1e-5), (a["step"], key)
    # Checkpoints and the final folder hold full (unsharded) weights, equal to DDP's up to reduction order.
    assert max_abs_diff(folder_weights(out / "final"), folder_weights(ddp_run["out"] / "final")) < 1e-6
    ckpt = folder_weights(out / "checkpoints" / "step-000002" / "model")
    assert ckpt.keys() >= folder_weights(out / "final").keys()


def test_fsdp_resumes_exactly(fsdp_run, tmp_path):
    """Resume a 2-rank FSDP run from its step-2 checkpoint (sharded optimizer state saved in full and
    re-sharded on load): step 3 and the final weights equal the uninterrupted run."""
    out = tmp_path / "run"
    shutil.copytree(fsdp_run["out"] / "checkpoints" / "step-000002", out / "checkpoints" / "step-000002")
    (out / "checkpoints" / "LATEST").write_text("step-000002")
    ref = read_metrics(fsdp_run["out"])
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ref[:2]))
    values = {**fsdp_run["values"], "out_dir": str(out)}
    proc = _torchrun(["-m", "training", "train", "--resume", *set_args(values)])
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert "resumed from" in proc.stderr and "at step 2" in proc.stderr
    got = read_metrics(out)
    assert [r["step"] for r in got] == [1, 2, 3]
    for key in ("loss", "lm_loss", "con_loss"):
        assert got[2][key] == pytest.approx(ref[2][key], abs=1e-5), key
    assert max_abs_diff(folder_weights(out / "final"), folder_weights(fsdp_run["out"] / "final")) <= 1e-6


@pytest.mark.parametrize("item, message", [
    ("mode=qlora", "QLoRA cannot be combined with distributed: fsdp"),
    ("optim=adamw8bit", "adamw8bit cannot be combined with distributed: fsdp"),
])
def test_fsdp_rejects_bitsandbytes_modes_before_any_work(item, message):
    cfg = load_config(None, ["data=x", "distributed=fsdp", item])
    with pytest.raises(ModeUnavailable, match=message):
        preflight(cfg, torch.device("cpu"), world=2)
    preflight(load_config(None, ["data=x", "distributed=fsdp"]), torch.device("cpu"), world=2)  # plain FSDP: fine
