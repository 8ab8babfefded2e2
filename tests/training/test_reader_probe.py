"""benchmarks/reader_probe.py: the three token orders are the permutations they claim to be, and the CLI
trains a reader on a tiny model's frozen tokens and scores every slot of the test album."""

from __future__ import annotations

import sys

import torch

from .conftest import REPO, run_benchmark

sys.path.insert(0, str(REPO / "benchmarks"))
import reader_probe  # noqa: E402


def test_orders_are_raster_column_and_a_per_photo_shuffle():
    n, g, d = 2, 3, 1
    grids = torch.arange(n * g * g * d, dtype=torch.float32).reshape(n, g, g, d)  # value = row * g + col
    gen = torch.Generator().manual_seed(0)
    raster = reader_probe.ordered(grids, "raster", gen)[0, :, 0].tolist()
    column = reader_probe.ordered(grids, "column", gen)[0, :, 0].tolist()
    assert raster == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert column == [0, 3, 6, 1, 4, 7, 2, 5, 8]  # one column after the other
    shuffled = reader_probe.ordered(grids, "shuffled", gen)[:, :, 0]
    assert sorted(shuffled[0].tolist()) == raster and sorted(shuffled[1].tolist()) == [v + 9 for v in raster]
    assert shuffled[0].tolist() != raster or shuffled[1].tolist() != [v + 9 for v in raster]


def test_reader_probe_cli_on_a_tiny_model(tmp_path):
    from data.synth import write_album

    fit = write_album(tmp_path / "fit", n=40, seed=21, split="train", short_side=96).out_dir
    test = write_album(tmp_path / "test", n=10, seed=22, split="test", short_side=96).out_dir
    out = run_benchmark("reader_probe.py", ["--model", "tiny:llava", "--fit", str(fit), "--data", str(test),
                                            "--max-side", "96", "--orders", "raster,column", "--steps", "40",
                                            "--batch", "8", "--query", "question"])
    assert out["fit_photos"] == 40 and set(out["orders"]) == {"raster", "column"}
    for result in out["orders"].values():
        assert result["test_slots"] == 30 and 0.0 <= result["slot_accuracy"] <= 1.0
        curve = result["loss_by_tenth"]
        assert len(curve) == 10 and curve[-1] < curve[0]  # the reader learns something of the fit album
    assert 0.0 < out["majority_slot_accuracy"] <= 1.0
