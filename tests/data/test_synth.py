"""The synth writer and the CLI: files, consistency between them, reruns, contact sheet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from data.__main__ import main
from data.formats import read_jsonl_pairs, read_llava
from data.synth import write_album
from data.vocab import DESCRIBE_QUESTION
from data.world import PhotoSpec, captions, questions, sample_photo_specs

from .conftest import ALBUM_N, ALBUM_SEED

REPO = Path(__file__).resolve().parents[2]


def test_album_files_agree_with_each_other_and_with_the_specs(album):
    gt = json.loads((album / "ground_truth.json").read_text())
    specs = sample_photo_specs(ALBUM_N, ALBUM_SEED, "train")
    assert [PhotoSpec.from_dict(p) for p in gt["photos"]] == specs
    assert gt["split"] == "train" and gt["seed"] == ALBUM_SEED
    llava = json.loads((album / "llava.json").read_text())
    assert [r["id"] for r in llava] == [s.id for s in specs]
    for rec, photo, spec in zip(llava, gt["photos"], specs):
        assert rec["image"] == f"photos/{spec.id}.jpg" and (album / rec["image"]).is_file()
        assert photo["captions"] == captions(spec) and rec["caption"] in photo["captions"]
        conv = rec["conversations"]
        assert conv[0] == {"from": "human", "value": f"<image>\n{DESCRIBE_QUESTION}"}
        assert conv[1] == {"from": "gpt", "value": rec["caption"]}
        non_describe = [q for q in questions(spec) if q.qtype != "describe"]
        assert [(c["value"], d["value"]) for c, d in zip(conv[2::2], conv[3::2])] == [(q.question, q.answer) for q in non_describe]
        assert photo["qa"] == [vars(q) for q in questions(spec)]
        kinds = {p["kind"] for p in photo["pope"]}
        assert kinds == {"positive", "random", "popular", "adversarial"}
        for obj in photo["objects"]:
            left, top, right, bottom = obj["box"]
            assert 0 <= (left + right) / 2 <= spec.width and 0 <= (top + bottom) / 2 <= spec.height
        with Image.open(album / rec["image"]) as im:
            assert im.format == "JPEG"
    assert gt["album_questions"] and all(len(q["photo_ids"]) == 1 for q in gt["album_questions"])
    pairs = list(read_jsonl_pairs(album / "captions.jsonl"))
    assert [r.caption for r in pairs] == [r["caption"] for r in llava]
    assert [r.id for r in read_llava(album / "llava.json")] == [r["id"] for r in llava]


def test_rerun_into_the_same_folder_is_safe_and_identical(tmp_path):
    out = tmp_path / "a"
    write_album(out, n=8, seed=1, split="val")
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    r = write_album(out, n=8, seed=1, split="val")
    after = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert before == after and r.n_removed_stale == 0
    # A smaller rerun removes the photos the JSON no longer names, and any temp leftovers.
    (out / "photos" / ".val-1-00000.jpg.abc.tmp").write_bytes(b"half")
    (out / "photos" / "mine.jpg").write_bytes(b"user file")  # not ours: kept
    r = write_album(out, n=3, seed=1, split="val")
    names = sorted(p.name for p in (out / "photos").iterdir())
    assert names == ["mine.jpg", "val-1-00000.jpg", "val-1-00001.jpg", "val-1-00002.jpg"]
    assert r.n_removed_stale == 6
    assert len(json.loads((out / "llava.json").read_text())) == 3


def _cli(*args, cwd=REPO):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "data", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_cli_synth_and_contact_sheet(tmp_path):
    r = _cli("synth", str(tmp_path / "comp"), "--n", "6", "--seed", "4", "--split", "compositional")
    assert r.returncode == 0, r.stderr
    assert "wrote 6 compositional photos" in r.stdout
    assert len(list((tmp_path / "comp" / "photos").glob("*.jpg"))) == 6
    sheet = tmp_path / "docs" / "sheet.png"
    r = _cli("contact-sheet", str(sheet), "--n", "5", "--seed", "7")
    assert r.returncode == 0, r.stderr
    with Image.open(sheet) as im:
        assert im.format == "PNG" and im.width >= 4 * 240 and im.height >= 2 * 240


def test_cli_inspect(album, tmp_path, capsys):
    # In-process: the inspect path imports torch, which is slow to start in a subprocess.
    assert main(["inspect", str(album)]) == 0
    assert f"{ALBUM_N} usable, 0 skipped" in capsys.readouterr().out
    assert main(["inspect", str(tmp_path / "nothing.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
