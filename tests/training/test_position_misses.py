"""benchmarks/position_misses.py: each answer to a position question lands in the right kind of miss, and the
CLI asks every slot of every photo."""

from __future__ import annotations

import sys

from data.vocab import COLORS

from .conftest import REPO, run_benchmark

sys.path.insert(0, str(REPO / "benchmarks"))
import position_misses  # noqa: E402


def test_each_answer_gets_its_kind_of_miss():
    spec = next(s for s in _specs() if len(s.objects) == 2)
    (a, b) = spec.objects
    empty = next(p for p in ("left", "middle", "right") if p not in (a.position, b.position))
    other_size = "small" if a.size == "large" else "large"
    absent = next(c for c in COLORS if c not in (a.color, b.color))
    assert position_misses.miss_kind(f"a {a.size} {a.color} {a.shape}", spec, a.position) == "exact"
    assert position_misses.miss_kind("Nothing.", spec, empty) == "exact"
    assert position_misses.miss_kind(f"a {a.size} {a.color} {a.shape}", spec, empty) == "object_for_empty_slot"
    assert position_misses.miss_kind("nothing", spec, a.position) == "nothing_for_full_slot"
    assert position_misses.miss_kind(f"a {b.size} {b.color} {b.shape}", spec, a.position) == "other_object"
    assert position_misses.miss_kind(f"a {other_size} {a.color} {a.shape}", spec, a.position) == "wrong_size"
    assert position_misses.miss_kind(f"a {absent} {a.shape}", spec, a.position) == "not_in_photo"


def _specs():
    from data.world import sample_photo_specs

    return sample_photo_specs(60, seed=5, split="test")


def test_cli_asks_every_slot_of_every_photo(tmp_path):
    from data.synth import write_album

    album = write_album(tmp_path / "album", n=5, seed=21, split="test", short_side=96).out_dir
    out = run_benchmark("position_misses.py", ["--model", "tiny:llava", "--data", str(album), "--max-side", "96"])
    assert out["questions"] == 15 == sum(out["counts"].values())
    assert {k: sum(s[k] for s in out["per_slot"].values()) for k in out["counts"]} == out["counts"]
    assert out["accuracy"] == round(out["counts"]["exact"] / 15, 4)
