"""Cold start of `python -m app search`: wall time, time to the first result, CPU, and where import time goes;
prints one JSON object.

    .venv/bin/python benchmarks/cli_startup.py                  # about a minute on 2 CPU cores
    .venv/bin/python benchmarks/cli_startup.py --runs 5 --repo /path/to/another/checkout --out before.json

1. A sample-world album (--photos photos) is indexed once with the model (default: the shipped one).
2. `python -m app search QUERY --db DB --model MODEL` runs --runs times, each in a new process, after
   one uncounted run (the operating system's file cache and the bytecode caches are warm: "cold" is a
   fresh interpreter, not a cold disk).
   search_wall_s: from starting the process to its exit; first_result_s: to the first line of results
   on stdout; cpu_s: user + system CPU of the process (steadier than wall time on a shared machine).
   Medians over the runs (goal: search_wall_s <= 4 s on an idle 2-core machine).
   These runs find the model's saved text encoder (app.text_encoder), which the uncounted run wrote.
   model_*: the same search --runs times, each with an empty text-encoder cache, i.e. loading the model
   through transformers (model_wall_s includes saving the encoder after the results are printed).
3. A search that fails (a --db folder that does not exist): error_wall_s, the time to the error.
4. One more search under `python -X importtime`: the cumulative import time of the big modules
   (torch, transformers, torchvision, chromadb, gradio, ...) and the biggest top-level imports, in us.
   (-X importtime slows imports down; compare these numbers with each other, not with the wall times.)

--repo runs the commands in another checkout (same script, same machine, same album): the way to
measure before/after a change in the same conditions.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.report import emit  # noqa: E402

GOAL_SEARCH_WALL_S = 4.0
# Modules whose cumulative import time is reported (those that are imported at all).
WATCHED = ("torch", "torch._dynamo", "transformers", "transformers.modeling_utils", "transformers.processing_utils",
           "transformers.image_processing_utils", "torchvision", "torchvision.models", "sympy", "triton", "chromadb",
           "numpy", "PIL.Image", "gradio", "matplotlib", "pandas", "cafe_core", "app.search", "app.index", "app.store")


def env(cache: Path | None = None) -> dict:
    """The child's environment; `cache`: its XDG_CACHE_HOME (where app.text_encoder keeps encoders)."""
    extra = {"XDG_CACHE_HOME": str(cache)} if cache else {}
    return dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), HF_HUB_OFFLINE="1",
                GRADIO_ANALYTICS_ENABLED="False", **extra)


def run_timed(cmd: list[str], cwd: Path, cache: Path | None = None) -> dict:
    """Run a command, timing the first line on stdout and the exit; CPU from the child's rusage."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env(cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    first_at = time.perf_counter() - start
    rest = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": wall, "first_result_s": first_at if first else None, "cpu_s": usage.ru_utime + usage.ru_stime,
            "rc": proc.returncode, "lines": (first + rest).decode(errors="replace").splitlines(),
            "stderr": err.decode(errors="replace")}


def importtime(cmd: list[str], cwd: Path, cache: Path | None = None) -> dict:
    """Cumulative import us of WATCHED modules and the 12 biggest top-level imports of one run."""
    done = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], cwd=cwd, env=env(cache), capture_output=True,
                          text=True)
    rows = []
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            rows.append((m.group(4), int(m.group(2)), len(m.group(3)) // 2))
    cumulative = {name: us for name, us, _ in rows}
    top = sorted(((us, name) for name, us, depth in rows if depth == 0), reverse=True)[:12]
    return {"watched_us": {name: cumulative[name] for name in WATCHED if name in cumulative},
            "not_imported": [name for name in WATCHED if name not in cumulative],
            "top_level_us": [{"module": name, "us": us} for us, name in top],
            "all_imports_us": sum(us for _, us, depth in rows if depth == 0)}


def median(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def main() -> int:
    from app.config import DEMO_MODEL_DIR

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(DEMO_MODEL_DIR), help="model to index and search with (default: %(default)s)")
    p.add_argument("--repo", default=str(REPO), help="checkout whose `python -m app` is measured (default: this one)")
    p.add_argument("--runs", type=int, default=5, help="cold searches (default %(default)s)")
    p.add_argument("--photos", type=int, default=40, help="photos in the indexed album (default %(default)s)")
    p.add_argument("--query", default="a red circle", help="the search (default %(default)r)")
    p.add_argument("--work", help="folder for the album and database (default: a temporary one; reused if given)")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args()

    repo = Path(args.repo).resolve()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="cli-startup-"))
    album, db = work / "album", work / "db"
    if not (album / "ground_truth.json").exists():
        from data.synth import write_album

        write_album(album, n=args.photos, seed=200, split="test")
    if not (db / "chroma.sqlite3").exists():
        subprocess.run([sys.executable, "-m", "app", "index", str(album / "photos"), "--db", str(db), "--model",
                        args.model], cwd=repo, env=env(), check=True, capture_output=True)

    search = [sys.executable, "-m", "app", "search", args.query, "--db", str(db), "--model", args.model]
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    model_runs = []
    for i in range(args.runs):  # each with an empty cache: the model loads (and the encoder is saved after)
        fresh = work / f"cache-model-{i}"
        shutil.rmtree(fresh, ignore_errors=True)
        model_runs.append(run_timed(search, repo, fresh))
        shutil.rmtree(fresh, ignore_errors=True)
    # not counted: writes the checkout's bytecode caches and the text encoder, warms the file cache
    run_timed(search, repo, cache)
    runs = [run_timed(search, repo, cache) for _ in range(args.runs)]
    bad = [r for r in runs + model_runs if r["rc"] != 0 or not r["lines"]]
    if bad:
        print(bad[0]["stderr"][-2000:], file=sys.stderr)
        return 1
    error = []
    for i in range(3):  # a fresh name each time: an older version of the app creates the folder it was given
        missing = work / f"no-such-db-{os.getpid()}-{i}"
        error.append(run_timed([*search[:-4], "--db", str(missing), "--model", args.model], repo))
        shutil.rmtree(missing, ignore_errors=True)
    result = {
        "repo": str(repo),
        "model": args.model,
        "query": args.query,
        "photos": args.photos,
        "runs": args.runs,
        "search_wall_s": median(r["wall_s"] for r in runs),
        "first_result_s": median(r["first_result_s"] for r in runs),
        "cpu_s": median(r["cpu_s"] for r in runs),
        "search_wall_s_each": [round(r["wall_s"], 3) for r in runs],
        "text_encoder_saved": any(cache.glob("cafe-photos/text-encoders/*/meta.json")),
        "same_results_as_model": runs[0]["lines"] == model_runs[0]["lines"],
        "model_wall_s": median(r["wall_s"] for r in model_runs),
        "model_first_result_s": median(r["first_result_s"] for r in model_runs),
        "model_cpu_s": median(r["cpu_s"] for r in model_runs),
        "error_wall_s": median(r["wall_s"] for r in error),
        "error_cpu_s": median(r["cpu_s"] for r in error),
        "goal_search_wall_s": GOAL_SEARCH_WALL_S,
        "importtime": importtime(search, repo, cache),
        "model_importtime": importtime(search, repo, work / "cache-importtime"),
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)},
        "first_line": runs[0]["lines"][0],
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
