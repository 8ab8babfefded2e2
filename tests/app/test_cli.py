"""`python -m app`: the JSON contract of index/search/duplicates, batch queries, defaults and errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app import config
from app.__main__ import COMMANDS, main
from tests.app.conftest import REPO_ROOT
from tests.app.test_photos import BAD_FILES


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def indexed_cli(album, tiny_model_dir, tmp_path, capsys):
    """The album indexed through the CLI (plus two bad files): (root, db, index summary)."""
    root, _ = album
    (root / "broken.png").write_bytes(BAD_FILES["truncated.png"][0])
    (root / "notes.jpg").write_bytes(BAD_FILES["text.jpg"][0])
    db = tmp_path / "db"
    code, out, err = run_cli(capsys, "index", root, "--db", db, "--model", tiny_model_dir, "--json")
    assert code == 0, err
    return root, db, json.loads(out)


def test_index_json_contract(indexed_cli, tiny_model_dir, capsys):
    root, db, summary = indexed_cli
    assert summary == {
        "added": 16, "updated": 0, "removed": 0, "unchanged": 0, "total": 16,
        "skipped": [{"path": str(root / "broken.png"), "reason": "truncated"},
                    {"path": str(root / "notes.jpg"), "reason": "not-an-image"}],
    }
    code, out, _ = run_cli(capsys, "index", root, "--db", db, "--model", tiny_model_dir, "--json")
    assert code == 0 and json.loads(out)["unchanged"] == 16 and json.loads(out)["added"] == 0
    code, out, _ = run_cli(capsys, "index", root, "--db", db, "--model", tiny_model_dir)
    assert "unchanged 16" in out and "skipped 2" in out and "truncated" in out


def test_search_json_contract_and_filters(indexed_cli, tiny_model_dir, capsys):
    root, db, _ = indexed_cli
    base = ["--db", db, "--model", tiny_model_dir, "--json"]
    code, out, err = run_cli(capsys, "search", "a red circle", *base, "-k", "5")
    assert code == 0, err
    results = json.loads(out)["results"]
    assert len(results) == 5
    for r in results:
        assert os.path.isabs(r["path"]) and Path(r["path"]).exists()
        assert isinstance(r["score"], float) and isinstance(r["date"], str)
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)

    target = sorted((root / "a").glob("*.jpg"))[0]
    code, out, _ = run_cli(capsys, "search", "--image", target, *base, "-k", "1")
    assert json.loads(out)["results"][0]["path"] == str(target)

    code, out, _ = run_cli(capsys, "search", "a photo", *base, "-k", "50", "--after", "2020-01-01", "--before", "2022-01-01")
    dated = json.loads(out)["results"]
    assert all("2020-01-01" <= r["date"][:10] < "2022-01-01" for r in dated)
    code, out, _ = run_cli(capsys, "search", "a photo", *base, "-k", "50")
    everything = json.loads(out)["results"]
    assert len(everything) == 16
    assert len(dated) == sum("2020-01-01" <= r["date"][:10] < "2022-01-01" for r in everything)

    cut = everything[4]["score"]
    code, out, _ = run_cli(capsys, "search", "a photo", *base, "-k", "50", "--min-score", cut)
    assert len(json.loads(out)["results"]) == sum(r["score"] >= cut for r in everything)
    code, out, _ = run_cli(capsys, "search", "a photo", *base, "--folder", root / "b", "--sort", "newest")
    newest = json.loads(out)["results"]
    assert len(newest) == 8 and [r["date"] for r in newest] == sorted((r["date"] for r in newest), reverse=True)

    code, _, err = run_cli(capsys, "search", "x", *base, "--after", "yesterday")
    assert code == 2 and "YYYY-MM-DD" in err
    code, _, err = run_cli(capsys, "search", *base)
    assert code == 2 and "TEXT" in err


def test_search_batch_loads_once_and_answers_each_line(indexed_cli, tiny_model_dir, tmp_path, capsys):
    root, db, _ = indexed_cli
    image = str(sorted((root / "b" / "c").glob("*.jpg"))[0])
    queries = tmp_path / "queries.jsonl"
    queries.write_text("\n".join([
        json.dumps({"text": "a green triangle"}),
        json.dumps({"image": image}),
        json.dumps({"text": "at night", "image": image}),
        "",
        json.dumps({"image": str(tmp_path / "missing.jpg")}),
        "not json",
    ]) + "\n")
    code, out, err = run_cli(capsys, "search", "--batch", queries, "--db", db, "--model", tiny_model_dir, "-k", "3")
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 5 and code == 1
    assert all(len(line["results"]) == 3 for line in lines[:3])
    assert lines[1]["results"][0]["path"] == image
    assert "error" in lines[3] and "line 5" in lines[3]["error"] and "error" in lines[4]


def test_duplicates_json(indexed_cli, tiny_model_dir, capsys):
    root, db, _ = indexed_cli
    source = sorted((root / "a").glob("*.jpg"))[0]
    shutil.copy(source, root / "copy.jpg")
    run_cli(capsys, "index", root, "--db", db, "--model", tiny_model_dir)
    code, out, _ = run_cli(capsys, "duplicates", "--db", db, "--model", tiny_model_dir, "--json", "--threshold", "0.99999")
    report = json.loads(out)
    assert code == 0
    assert report["exact"] == [{"kind": "exact", "paths": sorted([str(source), str(root / "copy.jpg")]), "score": 1.0}]
    assert report["near"] == []


def test_model_mismatch_and_missing_index(indexed_cli, other_model_dir, tmp_path, capsys):
    _, db, _ = indexed_cli
    code, _, err = run_cli(capsys, "search", "x", "--db", db, "--model", other_model_dir)
    assert code == 2 and "another model" in err and "python -m app index" in err
    code, _, err = run_cli(capsys, "search", "x", "--db", tmp_path / "empty-db", "--model", other_model_dir)
    assert code == 2 and "no photos are indexed" in err


def test_default_model_and_db(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(config, "DEMO_MODEL_DIR", tmp_path / "models" / "cafe-tiny-sampleworld")
    code, _, err = run_cli(capsys, "index", tmp_path, "--db", tmp_path / "db")
    assert code == 2 and "--model" in err and "make demo-model" in err
    assert config.DEMO_MODEL_DIR.name == "cafe-tiny-sampleworld"

    monkeypatch.delenv(config.DB_ENV_VAR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    assert config.default_db_dir() == tmp_path / "home" / ".local" / "share" / "cafe-photos" / "db"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert config.default_db_dir() == tmp_path / "xdg" / "cafe-photos" / "db"
    monkeypatch.setenv(config.DB_ENV_VAR, str(tmp_path / "mine"))
    assert config.default_db_dir() == tmp_path / "mine"


def test_subcommands_are_registered_in_one_place():
    assert list(COMMANDS)[:3] == ["index", "search", "duplicates"]
    assert all(callable(add) and callable(run) for _, add, run in COMMANDS.values())
    with pytest.raises(SystemExit):
        main(["--help"])


@pytest.mark.slow
def test_unreadable_file_is_skipped(album, tiny_model_dir, tmp_path):
    """A file the indexer may not read is skipped as unreadable (as root: run without capabilities)."""
    root, _ = album
    locked = root / "locked.jpg"
    shutil.copy(sorted((root / "a").glob("*.jpg"))[0], locked)
    locked.chmod(0)
    prefix = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if not setpriv:
            pytest.skip("running as root without setpriv: cannot make a file unreadable")
        prefix = [setpriv, "--bounding-set=-all", "--inh-caps=-all"]
    cmd = prefix + [sys.executable, "-m", "app", "index", str(root), "--db", str(tmp_path / "db"),
                    "--model", str(tiny_model_dir), "--json"]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1")
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["skipped"] == [{"path": str(locked), "reason": "unreadable"}]
    assert summary["added"] == 16


@pytest.mark.slow
def test_chroma_server_with_shards(chroma_server, album, tiny_model_dir, capsys):
    host, port = chroma_server
    root, _ = album
    server = ["--chroma-host", host, "--chroma-port", port, "--model", tiny_model_dir]
    totals = []
    for shard in ("0/2", "1/2"):
        code, out, err = run_cli(capsys, "index", root, *server, "--shard", shard, "--json")
        assert code == 0, err
        totals.append(json.loads(out)["total"])
    assert sum(totals) == 16 and min(totals) > 0
    code, out, _ = run_cli(capsys, "search", "a photo", *server, "-k", "100", "--json")
    assert len(json.loads(out)["results"]) == 16
    code, out, _ = run_cli(capsys, "index", root, *server, "--json")
    assert json.loads(out)["unchanged"] == 16
