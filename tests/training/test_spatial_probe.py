"""benchmarks/spatial_probe.py: the probe fits what is separable and scores unseen labels as misses, and on a
tiny model the slot-pooled tokens read a slot's color better than the whole photo does (a patch embedding
keeps colors where they are, even at random init)."""

from __future__ import annotations

import sys

import numpy as np

from .conftest import REPO, run_benchmark

sys.path.insert(0, str(REPO / "benchmarks"))
import spatial_probe  # noqa: E402


def test_probe_fits_separable_classes_and_counts_unseen_labels_as_misses():
    rng = np.random.default_rng(0)
    centers = {"red": np.array([3.0, 0, 0]), "blue": np.array([0, 3.0, 0]), "empty": np.array([0, 0, 3.0])}
    y = [str(c) for c in rng.choice(list(centers), 90)]
    x = np.stack([centers[c] + rng.normal(0, 0.3, 3) for c in y])
    assert spatial_probe.probe_accuracy(x[:60], y[:60], x[60:], y[60:]) == 1.0
    assert spatial_probe.probe_accuracy(x[:60], y[:60], x[60:], ["green"] * 30) == 0.0
    assert spatial_probe.majority(["a", "a", "b"], ["a", "b", "b", "b"]) == 0.25
    assert [spatial_probe.column_slot(c, 12) for c in range(12)] == [0] * 4 + [1] * 4 + [2] * 4
    assert [spatial_probe.column_slot(c, 4) for c in range(4)] == [0, 1, 1, 2]


def test_spatial_probe_cli_on_a_tiny_model(tmp_path):
    from data.synth import write_album

    fit = write_album(tmp_path / "fit", n=120, seed=21, split="train", short_side=96).out_dir
    test = write_album(tmp_path / "test", n=40, seed=22, split="test", short_side=96).out_dir
    out = run_benchmark("spatial_probe.py", ["--model", "tiny:llava", "--fit", str(fit), "--data", str(test),
                                             "--max-side", "96"])
    assert (out["fit_slots"], out["test_slots"]) == (360, 120)
    assert out["slot_color_accuracy"] > max(out["whole_image_color_accuracy"], out["majority_color_accuracy"])
    assert 0.0 <= out["token_column_accuracy"] <= 1.0 and out["majority_column_accuracy"] <= 0.6
    layers = out["token_column_accuracy_by_layer"]
    assert list(layers)[0] == "embeddings" and list(layers)[-1] == "projector"
    assert layers["projector"] == out["token_column_accuracy"]
    assert layers["embeddings"] > out["majority_column_accuracy"]  # position embeddings are added there
    for t in spatial_probe.TARGETS:
        assert 0.0 <= out[f"slot_{t}_accuracy"] <= 1.0
