"""Dataset formats: round trips, <image> handling, autodetection, and errors that name file and line/index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from data.errors import DataFormatError
from data.formats import (
    Record,
    Turn,
    caption_conversation,
    detect_format,
    read_csv_pairs,
    read_jsonl_pairs,
    read_llava,
    read_records,
    read_sidecar_folder,
    strip_image_token,
    write_csv_pairs,
    write_jsonl_pairs,
    write_llava,
    write_sidecar_folder,
)


def _img(path: Path, color=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), color).save(path)
    return path


@pytest.fixture
def records(tmp_path) -> list[Record]:
    a = _img(tmp_path / "imgs" / "a.jpg")
    b = _img(tmp_path / "imgs" / "sub" / "b.png", (0, 0, 255))
    return [
        Record("r1", a, [Turn("user", "Describe the photo."), Turn("assistant", "a red thing")], "a red thing", ""),
        Record(
            "r2",
            b,
            [Turn("user", "What color?"), Turn("assistant", "blue"), Turn("user", "Shape?"), Turn("assistant", "a block")],
            None,
            "",
        ),
        Record("r3", None, [Turn("user", "Say hi."), Turn("assistant", "hi")], None, ""),
    ]


def _strip_source(recs):
    return [(r.id, r.image_path and r.image_path.resolve(), r.conversation, r.caption) for r in recs]


def test_llava_round_trip_with_multi_turn_and_text_only(records, tmp_path):
    path = write_llava(records, tmp_path / "ann" / "train.json", image_root=tmp_path / "imgs")
    raw = json.loads(path.read_text())
    assert raw[0]["image"] == "a.jpg" and raw[1]["image"] == "sub/b.png" and "image" not in raw[2]
    assert raw[0]["conversations"][0] == {"from": "human", "value": "<image>\nDescribe the photo."}
    assert raw[2]["conversations"][0]["value"] == "Say hi."
    back = list(read_llava(path, image_root=tmp_path / "imgs"))
    assert _strip_source(back) == _strip_source(records)
    assert back[1].source == f"{path}[1]"
    # contrastive caption: explicit caption, else the first assistant answer
    assert [r.contrastive_caption for r in back] == ["a red thing", "blue", "hi"]


def test_llava_image_placeholder_is_removed_wherever_it_is(tmp_path):
    for value, expected in [
        ("<image>\nWhat is this?", "What is this?"),
        ("What is this?\n<image>", "What is this?"),
        ("What is <image> this?", "What is this?"),
        ("<image>", ""),
    ]:
        assert strip_image_token(value) == expected
    path = tmp_path / "x.json"
    path.write_text(json.dumps([{"id": 7, "image": "p.jpg", "conversations": [
        {"from": "human", "value": "Question?\n<image>"}, {"from": "gpt", "value": "Answer."}]}]))
    (rec,) = read_llava(path)
    assert rec.id == "7" and rec.image_path == tmp_path / "p.jpg"
    assert rec.conversation == [Turn("user", "Question?"), Turn("assistant", "Answer.")]


def test_llava_onevision_style_single_image_list_and_roles(tmp_path):
    path = tmp_path / "ov.json"
    path.write_text(json.dumps([{"id": "o", "image": ["x/y.jpg"], "conversations": [
        {"from": "user", "value": "<image>\nHi"}, {"from": "assistant", "value": "Hello"}]}]))
    (rec,) = read_llava(path)
    assert rec.image_path == tmp_path / "x/y.jpg" and [t.role for t in rec.conversation] == ["user", "assistant"]


def test_pairs_round_trip_jsonl_and_csv(records, tmp_path):
    pairs = records[:2]
    j = write_jsonl_pairs(pairs, tmp_path / "pairs.jsonl", image_root=tmp_path)
    c = write_csv_pairs(pairs, tmp_path / "pairs.csv", image_root=tmp_path)
    assert json.loads(j.read_text().splitlines()[0]) == {"id": "r1", "image": "imgs/a.jpg", "caption": "a red thing"}
    for back in (list(read_jsonl_pairs(j)), list(read_csv_pairs(c))):
        assert [r.id for r in back] == ["r1", "r2"]
        assert [r.image_path.resolve() for r in back] == [r.image_path.resolve() for r in pairs]
        assert [r.caption for r in back] == ["a red thing", "blue"]
        assert back[0].conversation == caption_conversation("a red thing")
        assert back[0].conversation[0] == Turn("user", "Describe the photo.")
    assert list(read_csv_pairs(c))[1].source == f"{c}:3"


def test_csv_with_bom_quotes_and_extra_columns(tmp_path):
    p = tmp_path / "x.csv"
    p.write_bytes('\ufeffcaption,image,license\n"a cat, sitting\non a mat",cat.jpg,cc\n'.encode("utf-8"))
    (rec,) = read_csv_pairs(p)
    assert rec.caption == "a cat, sitting\non a mat" and rec.image_path == tmp_path / "cat.jpg" and rec.id == "x-3"


def test_sidecar_round_trip(records, tmp_path, caplog):
    folder = write_sidecar_folder(records[:2], tmp_path / "side")
    assert (folder / "r1.jpg").is_file() and (folder / "r1.txt").read_text() == "a red thing\n"
    _img(folder / "uncaptioned.jpg")
    with caplog.at_level("WARNING"):
        back = list(read_sidecar_folder(folder))
    assert "1 image(s) without a .txt caption" in caplog.text
    assert [(r.id, r.caption) for r in back] == [("r1", "a red thing"), ("r2", "blue")]
    assert back[0].image_path.read_bytes() == records[0].image_path.read_bytes()


def test_detect_format(tmp_path, records):
    write_llava(records, tmp_path / "llava.json")
    assert detect_format(tmp_path) == "llava"
    assert detect_format(tmp_path / "llava.json") == "llava"
    (tmp_path / "a.jsonl").write_text("")
    (tmp_path / "a.csv").write_text("image,caption\n")
    assert detect_format(tmp_path / "a.jsonl") == "jsonl" and detect_format(tmp_path / "a.csv") == "csv"
    assert detect_format(tmp_path / "imgs") == "sidecar"
    fmt, recs = read_records(tmp_path)
    assert fmt == "llava" and len(list(recs)) == 3
    (tmp_path / "a.parquet").write_text("")
    with pytest.raises(DataFormatError, match=r"a\.parquet: unknown dataset format"):
        detect_format(tmp_path / "a.parquet")
    with pytest.raises(DataFormatError, match="no such file"):
        detect_format(tmp_path / "nope.json")


GOOD_CONV = [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]


@pytest.mark.parametrize(
    "item, message",
    [
        ("not a dict", "expected an object"),
        ({"id": 1, "image": "a.jpg"}, 'missing or empty "conversations"'),
        ({"id": 1, "image": "a.jpg", "conversations": [{"from": "robot", "value": "x"}, {"from": "gpt", "value": "y"}]}, "unknown role 'robot'"),
        ({"id": 1, "image": "a.jpg", "conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]}, "must alternate"),
        ({"id": 1, "image": "a.jpg", "conversations": [{"from": "human", "value": "x"}]}, "must end with a gpt turn"),
        ({"id": 1, "conversations": GOOD_CONV}, "no \"image\""),
        ({"id": 1, "image": ["a.jpg", "b.jpg"], "conversations": GOOD_CONV}, "only single-image"),
        ({"id": 1, "image": "a.jpg", "conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "y"}]}, 'string "value"'),
        ({"id": 1, "image": "a.jpg", "conversations": [{"from": "human", "value": "<image>Q"}, {"from": "gpt", "value": " "}]}, "empty value"),
        ({"id": 1, "image": "a.jpg", "caption": 5, "conversations": GOOD_CONV}, '"caption" must be'),
    ],
)
def test_malformed_llava_record_names_file_and_index(tmp_path, item, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"id": 0, "image": "ok.jpg", "conversations": GOOD_CONV}, item]))
    with pytest.raises(DataFormatError) as e:
        list(read_llava(path))
    assert str(e.value).startswith(f"{path}, record 1: ")
    assert message in str(e.value)
    assert e.value.index == 1 and e.value.path == path


def test_llava_syntax_error_names_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n {"id": 1,\n  "image": "a.jpg"\n  "conversations": []}\n]')
    with pytest.raises(DataFormatError, match=r"broken\.json, line 4: invalid JSON"):
        list(read_llava(path))
    path.write_text('{"id": 1}')
    with pytest.raises(DataFormatError, match="expected a JSON list"):
        list(read_llava(path))


def test_malformed_jsonl_names_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"image": "a.jpg", "caption": "x"}\n\n{"image": "b.jpg", "caption": "y"\n')
    with pytest.raises(DataFormatError, match=r"p\.jsonl, line 3: invalid JSON"):
        list(read_jsonl_pairs(path))
    path.write_text('{"image": "a.jpg", "caption": "x"}\n{"image": "b.jpg"}\n')
    with pytest.raises(DataFormatError, match=r"p\.jsonl, line 2: \"caption\" must be a non-empty string"):
        list(read_jsonl_pairs(path))
    path.write_text('["a.jpg", "x"]\n')
    with pytest.raises(DataFormatError, match=r"line 1: expected an object"):
        list(read_jsonl_pairs(path))
    path.write_bytes(b'{"image": "a.jpg", "caption": "x"}\n{"image": "\xff"}\n')
    with pytest.raises(DataFormatError, match=r"line 2: not UTF-8"):
        list(read_jsonl_pairs(path))


def test_malformed_csv_names_line(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("img,caption\na.jpg,x\n")
    with pytest.raises(DataFormatError, match=r"p\.csv, line 1: header lacks column\(s\) \['image'\]"):
        list(read_csv_pairs(path))
    path.write_text("image,caption\na.jpg,x\nb.jpg,\n")
    with pytest.raises(DataFormatError, match=r"p\.csv, line 3: \"caption\" must be a non-empty"):
        list(read_csv_pairs(path))
    path.write_text("image,caption\na.jpg,x,extra\n")
    with pytest.raises(DataFormatError, match=r"line 2: row has 3 cells, header has 2"):
        list(read_csv_pairs(path))


def test_sidecar_empty_caption_names_the_txt(tmp_path):
    _img(tmp_path / "a.jpg")
    (tmp_path / "a.txt").write_text("  \n")
    with pytest.raises(DataFormatError, match=r"a\.txt: caption file is empty"):
        list(read_sidecar_folder(tmp_path))
