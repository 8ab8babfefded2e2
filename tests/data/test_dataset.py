"""The streaming dataset: upright RGB images, sharding over ranks x workers, shuffle, resume,
skipping bad images, and the zero-usable-samples error."""

from __future__ import annotations

import gc
import json
import shutil
import weakref

import pytest
from PIL import Image
from torch.utils.data import DataLoader

from data.dataset import CafeDataset, CafeSample, collate_samples, open_dataset
from data.errors import DataFormatError
from data.formats import Record, Turn, caption_conversation, write_jsonl_pairs
from data.world import COLOR_RGB, PhotoSpec, layout

from .conftest import ALBUM_N


def _ids(ds) -> list[str]:
    return [s.id for s in ds]


def test_album_streams_upright_rgb_samples(album):
    ds = open_dataset(album)
    assert ds.format == "llava" and len(ds) == ALBUM_N
    gt = {p["id"]: p for p in json.loads((album / "ground_truth.json").read_text())["photos"]}
    llava = {r["id"]: r for r in json.loads((album / "llava.json").read_text())}
    rotated = 0
    for s in ds:
        assert isinstance(s, CafeSample) and s.image.mode == "RGB"
        g = gt[s.id]
        assert s.image.size == (g["width"], g["height"])  # EXIF orientation applied
        spec = PhotoSpec.from_dict(g)
        for obj, lay in zip(spec.objects, layout(spec)):
            px = s.image.getpixel((int(lay.cx), int(lay.cy)))
            assert all(abs(a - b) <= 40 for a, b in zip(px, COLOR_RGB[obj.color])), (s.id, obj)
        rotated += g["orientation"] != 1
        assert s.caption == llava[s.id]["caption"]
        assert s.conversation[0] == Turn("user", "Describe the photo.")
        assert all("<image>" not in t.content for t in s.conversation)
        assert len(s.conversation) == len(llava[s.id]["conversations"])
    assert rotated >= 1
    assert ds.skipped == 0 and ds.yielded == ALBUM_N


def test_every_supported_format_opens(album, tmp_path):
    assert len(open_dataset(album / "llava.json")) == ALBUM_N
    jsonl = open_dataset(album / "captions.jsonl")
    assert jsonl.format == "jsonl" and len(jsonl) == ALBUM_N
    first = next(iter(jsonl))
    assert first.conversation == caption_conversation(first.caption) and first.image.mode == "RGB"
    side = tmp_path / "side"
    side.mkdir()
    shutil.copy(album / "photos" / f"{first.id}.jpg", side / "p.jpg")
    (side / "p.txt").write_text("a caption\n")
    (s,) = list(open_dataset(side))
    assert s.caption == "a caption" and s.image.size == first.image.size


def _sharded_ids(ds: CafeDataset, world: int, workers: int) -> list[list[str]]:
    out = []
    for rank in range(world):
        ds.shard(rank, world)
        loader = DataLoader(ds, batch_size=3, num_workers=workers, collate_fn=collate_samples)
        out.append([s.id for batch in loader for s in batch])
    return out


def test_each_sample_seen_once_per_epoch_across_ranks_and_workers(album):
    ds = open_dataset(album).shuffle(seed=3)
    all_ids = sorted(r.id for r in ds.records)
    per_rank = _sharded_ids(ds, world=2, workers=2)
    flat = [i for ids in per_rank for i in ids]
    assert sorted(flat) == all_ids  # exactly once: no loss, no duplicates
    assert all(abs(len(ids) - ALBUM_N / 2) <= 2 for ids in per_rank)


def test_shuffle_is_deterministic_per_seed_and_epoch(album):
    ds = open_dataset(album)
    plain = _ids(ds)
    assert plain == [r.id for r in ds.records]
    ds.shuffle(1).set_epoch(0)
    e0 = _ids(ds)
    assert e0 != plain and sorted(e0) == sorted(plain)
    assert _ids(ds) == e0
    ds.set_epoch(1)
    e1 = _ids(ds)
    assert e1 != e0 and sorted(e1) == sorted(plain)
    assert _ids(open_dataset(album).shuffle(1).set_epoch(1)) == e1


def test_skip_resumes_inside_an_epoch(album):
    ds = open_dataset(album).shuffle(2).set_epoch(4)
    full = _ids(ds)
    assert _ids(ds.skip(10)) == full[10:]
    # Sharded resume: the shards of the rest together are exactly the rest.
    rest = []
    for rank in range(3):
        rest += _ids(ds.shard(rank, 3))
    assert sorted(rest) == sorted(full[10:])
    ds.set_epoch(5)  # a new epoch starts from 0 again
    assert len(_ids(ds.shard(0, 1))) == ALBUM_N
    with pytest.raises(ValueError):
        ds.skip(ALBUM_N + 1)


def test_images_are_not_held_in_memory(album):
    ds = open_dataset(album)
    refs = []
    for s in ds:
        refs.append(weakref.ref(s.image))
        del s
    gc.collect()
    assert sum(r() is not None for r in refs) == 0
    assert all(not hasattr(r, "image") for r in ds.records)


@pytest.fixture
def damaged(tmp_path, album):
    """5 good photos, 1 missing, 1 truncated JPEG, 1 non-image, 1 text-only record."""
    photos = sorted((album / "photos").glob("*.jpg"))[:5]
    recs = [Record(p.stem, p, caption_conversation("cap " + p.stem), None, "") for p in photos]
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(photos[0].read_bytes()[:600])
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not a jpeg")
    recs += [
        Record("missing", tmp_path / "missing.jpg", caption_conversation("m"), None, "x"),
        Record("truncated", truncated, caption_conversation("t"), None, "x"),
        Record("garbage", garbage, caption_conversation("g"), None, "x"),
        Record("text", None, [Turn("user", "Hi"), Turn("assistant", "Hello")], None, "x"),
    ]
    return recs


def test_bad_images_are_skipped_counted_and_logged(damaged, caplog):
    ds = CafeDataset(damaged)
    with caplog.at_level("WARNING", logger="data.dataset"):
        samples = list(ds)
    assert [s.id for s in samples] == [r.id for r in damaged[:5]] + ["text"]
    assert ds.skipped == 3 and ds.yielded == 6 and len(ds) == 9
    text = caplog.text
    assert "missing" in text and "truncated" in text and "garbage" in text
    assert "skipped 3 of 9 samples" in text
    t = samples[-1]
    assert t.image is None and t.caption == "Hello"


def test_open_dataset_warns_about_missing_images(tmp_path, damaged, caplog):
    path = write_jsonl_pairs([r for r in damaged if r.image_path is not None], tmp_path / "pairs.jsonl")
    with caplog.at_level("WARNING", logger="data.dataset"):
        ds = open_dataset(path)
    assert "1 of 8 image files are missing" in caplog.text
    assert len(list(ds)) == 5 and ds.skipped == 3


def test_zero_usable_samples_is_a_clear_error(tmp_path, damaged):
    only_missing = tmp_path / "missing.jsonl"
    only_missing.write_text('{"image": "nope/a.jpg", "caption": "x"}\n{"image": "nope/b.jpg", "caption": "y"}\n')
    with pytest.raises(DataFormatError, match=r"missing\.jsonl: zero usable samples: none of the 2 image files exist"):
        open_dataset(only_missing)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataFormatError, match=r"empty\.jsonl: zero usable samples: no records"):
        open_dataset(empty)
    corrupt_only = CafeDataset([r for r in damaged if r.id in ("truncated", "garbage")], path=tmp_path / "c.json")
    with pytest.raises(DataFormatError, match=r"c\.json: zero usable samples: all 2 records"):
        list(corrupt_only)
    with pytest.raises(DataFormatError, match="no records"):
        CafeDataset([])


def test_max_side_shrinks_large_photos(tmp_path):
    big = tmp_path / "big.jpg"
    Image.new("RGB", (1600, 1200), (10, 200, 10)).save(big)
    (s,) = list(CafeDataset([Record("b", big, caption_conversation("g"), None, "")], max_side=400))
    assert max(s.image.size) <= 400 and s.image.size[0] > s.image.size[1]
