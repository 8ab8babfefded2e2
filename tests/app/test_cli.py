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


# ----------------------------------------------------------------------------------- hardening


def one_line(err: str) -> str:
    """The one line a failed command writes to stderr (no traceback, no usage block)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def cli_env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


def run_subprocess(*argv, **kw) -> subprocess.CompletedProcess:
    """`python -m app ARGV` in its own process (argv items may be bytes: not every argument is UTF-8)."""
    args = [a if isinstance(a, bytes) else str(a) for a in argv]
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=REPO_ROOT, env=cli_env(), capture_output=True,
                          timeout=300, **kw)


def test_store_problems_end_in_one_line_and_create_nothing(tmp_path, tiny_model_dir, capsys):
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "chroma.sqlite3").write_bytes(b"this is no database" + bytes(range(256)) * 64)
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    missing = tmp_path / "missing"
    model = ["--model", tiny_model_dir]
    cases = [
        (["search", "x", "--db", damaged], ["damaged or not a Chroma database", "file is not a database",
                                            f"mv {damaged} {damaged}.broken"]),
        (["index", tmp_path, "--db", damaged], ["damaged or not a Chroma database"]),
        (["search", "x", "--db", a_file], [f"--db {a_file} is a file, not a database folder"]),
        (["index", tmp_path, "--db", a_file], [f"--db {a_file} is a file, not a database folder"]),
        (["index", tmp_path, "--db", a_file / "db"], [f"cannot create the database folder {a_file / 'db'}"]),
        (["search", "x", "--db", missing], ["no photos are indexed", "python -m app index PHOTOS_DIR"]),
        (["duplicates", "--db", missing], ["no photos are indexed"]),
        (["ask", "what is it?", "--db", missing], ["no photos are indexed"]),
    ]
    for argv, wanted in cases:
        code, _, err = run_cli(capsys, *argv, *model)
        line = one_line(err)
        assert code == 2 and line.startswith("error: "), (argv, err)
        for text in wanted:
            assert text in line, (argv, line)
    assert not missing.exists()  # a command that only reads created no database folder


def test_read_only_database_is_one_line(indexed_cli, tiny_model_dir, tmp_path):
    """Chroma writes even to search: a read-only database says so and how to fix it (run without root's
    capabilities, which would write anyway)."""
    _, db, _ = indexed_cli
    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: cannot make a database read-only")
        prefix = [shutil.which("setpriv"), "--bounding-set=-all", "--inh-caps=-all"]
    subprocess.run(["chmod", "-R", "a-w", str(db)], check=True)
    try:
        for argv in (["search", "a red circle"], ["index", str(tmp_path / "photos")]):
            done = subprocess.run([*prefix, sys.executable, "-m", "app", *argv, "--db", str(db), "--model",
                                   str(tiny_model_dir)], cwd=REPO_ROOT, env=cli_env(), capture_output=True,
                                  text=True, timeout=300)
            line = one_line(done.stderr)
            assert done.returncode == 2, done.stderr
            assert "readonly database" in line and f"chmod -R u+w {db}" in line
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(db)], check=True)


def test_a_failing_command_fails_before_torch_loads(tmp_path, indexed_cli, tiny_model_dir):
    """Errors found in the arguments, the batch file or the database cost no model load: torch (seconds to
    import) is never imported for them."""
    _, db, _ = indexed_cli
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "chroma.sqlite3").write_bytes(b"\x00garbage" * 1000)
    binary = tmp_path / "photo.jpg"
    shutil.copy(sorted(indexed_cli[0].glob("a/*.jpg"))[0], binary)
    probe = ("import sys\nfrom app.__main__ import main\ncode = main(sys.argv[1:])\n"
             "print(sorted(m for m in ('torch', 'transformers', 'gradio') if m in sys.modules))\nsys.exit(code)")
    for argv in (["search", "x", "--db", tmp_path / "missing"], ["ask", "what?", "--db", tmp_path / "missing"],
                 ["search", "x", "--db", damaged], ["search", "--batch", binary, "--db", db],
                 ["ask", "--batch", binary, "--db", db], ["duplicates", "--db", tmp_path / "missing"]):
        done = subprocess.run([sys.executable, "-c", probe, *map(str, argv), "--model", str(tiny_model_dir)],
                              cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 2 and done.stdout.strip() == "[]", (argv, done.stdout, done.stderr)
        one_line(done.stderr)


def test_search_imports_only_what_it_uses(indexed_cli, tiny_model_dir):
    _, db, _ = indexed_cli
    probe = ("import sys\nfrom app.__main__ import main\ncode = main(sys.argv[1:])\n"
             "heavy = ('gradio', 'matplotlib', 'pandas', 'fastapi', 'app.ui', 'app.service', 'app.answer', 'training',"
             " 'data.synth')\nprint(sorted(m for m in heavy if m in sys.modules), file=sys.stderr)\nsys.exit(code)")
    done = subprocess.run([sys.executable, "-c", probe, "search", "a red circle", "--db", str(db), "--model",
                           str(tiny_model_dir), "--json"], cwd=REPO_ROOT, env=cli_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and len(json.loads(done.stdout)["results"]) == 10, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "[]"


def test_read_only_commands_exit_fast_with_all_their_output(indexed_cli, tiny_model_dir, tmp_path):
    """search/duplicates/ask leave with os._exit once their output is flushed (skipping the interpreter's
    teardown of torch and chromadb): everything they print still arrives, through a pipe, and an ask
    --session file is complete."""
    root, db, _ = indexed_cli
    model = ["--db", db, "--model", tiny_model_dir]
    done = run_subprocess("search", "a photo", *model, "-k", "16")
    lines = done.stdout.decode().splitlines()
    assert done.returncode == 0 and len(lines) == 16 and all(Path(line.split()[-1]).is_file() for line in lines)
    done = run_subprocess("duplicates", *model, "--json", "--threshold", "0.999999")
    assert done.returncode == 0 and json.loads(done.stdout) == {"exact": [], "near": []}
    session = tmp_path / "talk.json"
    photo = sorted((root / "a").glob("*.jpg"))[0]
    done = run_subprocess("ask", "What color is the background?", "--image", photo, "--session", session, *model,
                          "--json")
    assert done.returncode == 0 and "answer" in json.loads(done.stdout), done.stderr
    assert len(json.loads(session.read_text())["turns"]) == 1


def test_query_that_is_not_utf8_is_one_line(indexed_cli, tiny_model_dir):
    _, db, _ = indexed_cli
    for command in ("search", "ask"):
        done = run_subprocess(command, b"\xff\xfe red", "--db", db, "--model", tiny_model_dir)
        line = one_line(done.stderr.decode())
        assert done.returncode == 2 and "not valid UTF-8" in line and "\\xff\\xfe red" in line


def test_batch_files_that_are_not_text(indexed_cli, tiny_model_dir, tmp_path, capsys):
    root, db, _ = indexed_cli
    photo = sorted((root / "a").glob("*.jpg"))[0]
    base = ["--db", db, "--model", tiny_model_dir]
    for command in ("search", "ask"):
        code, out, err = run_cli(capsys, command, "--batch", photo, *base)
        line = one_line(err)
        assert code == 2 and out == "" and f"--batch {photo}: line 1 is not UTF-8 text" in line
        code, _, err = run_cli(capsys, command, "--batch", tmp_path, *base)
        assert code == 2 and "cannot read --batch" in one_line(err)
    # Bytes that are not UTF-8 on line 2 of the file's start: refused before any line is answered.
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_bytes(b'{"text": "a red circle"}\n{"text": "a\xff"}\n')
    code, out, err = run_cli(capsys, "search", "--batch", mixed, *base, "-k", "2")
    assert code == 2 and out == "" and f"--batch {mixed}: line 2 is not UTF-8" in one_line(err)
    # ... and further down (past what is checked up front): the lines before are answered, then one line.
    late = tmp_path / "late.jsonl"
    late.write_bytes(b'{"text": "a red circle"}\n' * 400 + b'{"text": "a\xff"}\n')
    code, out, err = run_cli(capsys, "search", "--batch", late, *base, "-k", "1")
    assert code == 2 and len(out.splitlines()) == 400 and f"--batch {late}: line 401 is not UTF-8" in one_line(err)
    # JSON can spell text that is not Unicode (a lone surrogate) or not text: an error line, the batch goes on.
    odd = tmp_path / "odd.jsonl"
    odd.write_text('{"text": "\\udcff"}\n{"text": 5}\n{"text": "a red circle"}\n')
    code, out, err = run_cli(capsys, "search", "--batch", odd, *base, "-k", "1")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 1 and err == ""
    assert "line 1" in lines[0]["error"] and "line 2" in lines[1]["error"] and len(lines[2]["results"]) == 1


def test_closed_stdout_ends_quietly(indexed_cli, tiny_model_dir):
    """`python -m app search ... | head -1`: the reader is gone before the first result is written."""
    _, db, _ = indexed_cli
    for extra in ([], ["--json"]):
        read_end, write_end = os.pipe()
        proc = subprocess.Popen([sys.executable, "-m", "app", "search", "a photo", "--db", str(db), "--model",
                                 str(tiny_model_dir), "-k", "16", *extra], cwd=REPO_ROOT, env=cli_env(),
                                stdout=write_end, stderr=subprocess.PIPE, text=True)
        os.close(write_end)
        os.close(read_end)
        err = proc.stderr.read()
        assert proc.wait(timeout=300) in (0, 141), err
        assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err


@pytest.mark.parametrize("argv, option", [
    (["search", "x", "--min-score", "nan"], "--min-score"),
    (["search", "x", "--min-score", "inf"], "--min-score"),
    (["search", "x", "--min-score", "1.5"], "--min-score"),
    (["search", "x", "-k", "0"], "-k"),
    (["search", "x", "-k", "three"], "-k"),
    (["search", "x", "--chroma-port", "0"], "--chroma-port"),
    (["search", "x", "--dtype", "float64"], "--dtype"),
    (["search", "x", "--image-crops", "tiles"], "--image-crops"),
    (["ask", "q", "-k", "0"], "-k"),
    (["ask", "q", "--max-context", "0"], "--max-context"),
    (["ask", "q", "--rerank-top", "-1"], "--rerank-top"),
    (["ask", "q", "--min-score", "nan"], "--min-score"),
    (["ask", "q", "--rerank-weight", "-inf"], "--rerank-weight"),
    (["ask", "q", "--min-yes", "2"], "--min-yes"),
    (["ask", "q", "--context-margin", "-0.1"], "--context-margin"),
    (["ask", "q", "--min-size-margin", "nan"], "--min-size-margin"),
    (["duplicates", "--threshold", "2"], "--threshold"),
    (["index", "photos", "--batch-size", "0"], "--batch-size"),
    (["index", "photos", "--workers", "0"], "--workers"),
    (["index", "photos", "--max-pixels", "0"], "--max-pixels"),
    (["serve", "--port", "70000"], "--port"),
    (["serve", "--port", "0"], "--port"),
    (["demo", "--album-size", "0"], "--album-size"),
])
def test_bad_option_values_are_refused_naming_the_option(argv, option, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    line = one_line(capsys.readouterr().err)
    assert info.value.code == 2 and line.startswith(f"error: argument {option}") and "--help" in line, line


def test_option_bounds_are_inclusive():
    from app.__main__ import build_parser

    args = build_parser().parse_args(["search", "x", "-k", "1", "--min-score", "-1"])
    assert (args.k, args.min_score) == (1, -1.0)
    args = build_parser().parse_args(["ask", "q", "--rerank-top", "0", "--min-yes", "1", "--max-context", "1"])
    assert (args.rerank_top, args.min_yes, args.max_context) == (0, 1.0, 1)
    assert build_parser().parse_args(["serve", "--port", "65535"]).port == 65535
    assert build_parser().parse_args(["duplicates", "--threshold", "1"]).threshold == 1.0


def test_a_model_that_does_not_load_reads_the_same_whatever_the_path(tmp_path, capsys):
    """--model with a missing path, a folder without a model, a file: one message, which does not say which
    of them it was (the web UI's model box gets the same; it must not map the server's paths)."""
    folder = tmp_path / "holiday-photos"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a model")
    a_file = tmp_path / "weights.bin"
    a_file.write_bytes(b"\0" * 64)
    messages = set()
    for path in (tmp_path / "missing", folder, a_file):
        code, _, err = run_cli(capsys, "index", tmp_path, "--db", tmp_path / "db", "--model", path)
        line = one_line(err)
        assert code == 2 and str(path) in line, line
        messages.add(line.replace(str(path), "MODEL"))
    (message,) = messages
    assert "is not a model that can be loaded here" in message and "tiny:<preset>" in message


def test_image_crops_index_and_search(album, tmp_path, capsys):
    """An index built with --image-crops base (tiny LLaVA-OneVision: the setting changes its vectors) is
    refused to a search with native crops, naming the setting to use, and answers a search with base crops."""
    root, _ = album
    db = tmp_path / "db"
    model = ["--model", "tiny:llava-onevision", "--device", "cpu", "--db", db]
    code, out, err = run_cli(capsys, "index", root, *model, "--image-crops", "base", "--json")
    assert code == 0 and json.loads(out)["added"] == 16, err

    code, out, err = run_cli(capsys, "search", "a red circle", *model, "--image-crops", "native")
    line = one_line(err)
    assert code == 2 and out == ""
    assert "--image-crops base, not native" in line and "re-index with this setting: python -m app index" in line

    target = sorted((root / "a").glob("*.jpg"))[2]
    for crops in ("base", "auto"):  # auto: base on CPU
        code, out, err = run_cli(capsys, "search", "--image", target, *model, "--image-crops", crops, "-k", "3",
                                 "--json")
        results = json.loads(out)["results"]
        assert code == 0 and len(results) == 3 and results[0]["path"] == str(target), err


def test_dtype_reaches_the_model(indexed_cli, tiny_model_dir, capsys):
    """--dtype bfloat16 loads bfloat16 weights; the fingerprint is dtype-robust, so the float32 index answers."""
    import torch

    from app.model import load_model

    assert load_model(str(tiny_model_dir), device="cpu", dtype="bfloat16").dtype == torch.bfloat16
    assert load_model(str(tiny_model_dir), device="cpu", dtype="float32").dtype == torch.float32
    from app.config import IMAGE_CROPS
    from cafe_core.crops import IMAGE_CROPS as CORE_CROPS

    assert set(IMAGE_CROPS) == {"auto", *CORE_CROPS}  # the CLI's choices are cafe_core's (without importing it)
    _, db, _ = indexed_cli
    code, out, err = run_cli(capsys, "search", "a red circle", "--db", db, "--model", tiny_model_dir, "--dtype",
                             "bfloat16", "-k", "4", "--json")
    assert code == 0 and len(json.loads(out)["results"]) == 4, err
