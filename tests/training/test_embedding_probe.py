"""benchmarks/embedding_probe.py on a tiny model: the text-side distances and the image-side statistics it
reports are computed over the right pairs, and the CLI prints them as one JSON object."""

from __future__ import annotations

import json

from .conftest import run_benchmark


def test_embedding_probe_prints_text_and_image_statistics(tmp_path):
    from data.synth import write_album

    album = write_album(tmp_path / "album", n=40, seed=21, split="test", short_side=96).out_dir
    out = run_benchmark("embedding_probe.py", ["--model", "tiny:llava", "--data", str(album), "--max-side", "96"])
    gt = json.loads((album / "ground_truth.json").read_text())["photos"]
    assert out["one_object_photos"] == sum(len(p["objects"]) == 1 for p in gt) > 0
    # Different words give different embeddings even at random init; cosines stay in range.
    for key in ("text_dist_shape_changed", "text_dist_color_changed", "text_dist_shape_dropped"):
        assert 0.0 < out[key] <= 2.0, (key, out[key])
    for key in ("image_cos_same_kind", "image_cos_same_color_other_shape", "image_cos_same_shape_other_color"):
        assert -1.0 <= out[key] <= 1.0
    assert 0.0 <= out["image_shape_nn_accuracy_within_color"] <= 1.0
