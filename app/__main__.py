"""Command line: `python -m app SUBCOMMAND ...`.

    python -m app index PHOTOS_DIR [PHOTOS_DIR ...] [--db DB_DIR] [--model MODEL] [--shard I/N] [--json]
    python -m app search "TEXT" [--image PATH] [-k K] [--min-score S] [--after YYYY-MM-DD]
                         [--before YYYY-MM-DD] [--folder DIR] [--camera NAME] [--sort relevance|newest|oldest] [--json]
    python -m app search --batch QUERIES.jsonl ...      (one {"text": ..., "image": ...} per line)
    python -m app duplicates [--threshold T] [--json]
    python -m app ask "QUESTION" [--image PATH] [--db DB_DIR] [-k K] [--json]
    python -m app ask --batch QUESTIONS.jsonl ...       (one {"question": ..., "image": ...} per line)
    python -m app serve [--db DB_DIR] [--model MODEL] [--host 127.0.0.1] [--port 7860] [--auth USER:PASS] [--share]
    python -m app demo                                  (sample album + index + UI: `make run`)

Model options on every command that loads one: --model, --device, --dtype auto|float32|bfloat16,
--image-crops auto|native|base (app.config.ModelConfig). serve/demo: --ui-limit NAME=VALUE changes a
web-server limit (app.config.UIConfig: upload quota, login delays, ...).

Every subcommand is one `add_*_arguments(parser)` + one `cmd_*(args) -> int` pair registered in
COMMANDS at the bottom; add new subcommands (ask, serve, demo) the same way. Option values are checked
by app.options' argparse types. Errors are one line on stderr (`error: ...`) with exit code 2; a
closed stdout (`... | head`) ends quietly with 141. Whatever can be checked before the model loads
(arguments, batch files, the database) is, so those errors come in a second, without importing torch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, Iterator

from app.config import (
    DB_ENV_VAR,
    DEFAULT_CHROMA_PORT,
    DEFAULT_PORT,
    DTYPES,
    IMAGE_CROPS,
    LOOPBACK,
    ConfigError,
    IndexConfig,
    ModelConfig,
    SearchConfig,
    UIConfig,
    apply_quiet_env,
    default_db_dir,
    user_errors,
)
from app.options import OneLineParser, at_least, number, port, text

# Exit status when stdout was closed under us (`... | head`): what a shell reports for SIGPIPE.
EXIT_STDOUT_CLOSED = 141

# --------------------------------------------------------------------------------------------- shared


def add_db_arguments(p: argparse.ArgumentParser) -> None:
    """--db / --chroma-host / --chroma-port: where the index lives."""
    p.add_argument("--db", metavar="DB_DIR",
                   help=f"database folder (default: ${DB_ENV_VAR}, else $XDG_DATA_HOME/cafe-photos/db, "
                        f"else ~/.local/share/cafe-photos/db; now {default_db_dir()})")
    p.add_argument("--chroma-host", metavar="HOST", help="use a `chroma run` server instead of the --db folder")
    p.add_argument("--chroma-port", metavar="PORT", type=port, default=DEFAULT_CHROMA_PORT,
                   help="port of the chroma server (default %(default)s)")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """--model / --device / --dtype / --image-crops (app.config.ModelConfig)."""
    defaults = ModelConfig()
    p.add_argument("--model", metavar="MODEL",
                   help="model folder, hub id or tiny:<preset> (default: the shipped demo model)")
    p.add_argument("--device", default=defaults.device, help="cpu, cuda, cuda:N or auto (default %(default)s)")
    p.add_argument("--dtype", choices=DTYPES, default=defaults.dtype,
                   help="weights' precision; auto: bfloat16 on GPUs that support it, else float32 "
                        "(default %(default)s)")
    p.add_argument("--image-crops", choices=IMAGE_CROPS, default=defaults.image_crops,
                   help="views of a photo the model reads to embed it: native (the checkpoint's processor), base "
                        "(one view, several times cheaper for LLaVA-OneVision and SmolVLM), auto (base on CPU); "
                        "search with the setting the index was built with (default %(default)s)")


def model_options(args) -> dict:
    """load_model / PhotoIndex.open keyword arguments from the model options."""
    return {"device": args.device, "dtype": args.dtype, "image_crops": args.image_crops}


def open_index(args, create: bool, config: IndexConfig | None = None, text_only: bool = False):
    """PhotoIndex for the --db/--chroma-*/--model/--device/--dtype/--image-crops options of a subcommand.

    text_only: the index answers text queries only, so the model's saved text encoder serves when there is
    one (app.text_encoder: torch without transformers, seconds faster to start); else the model loads.
    """
    from app.index import PhotoIndex

    model = args.model
    if text_only:
        from app.config import resolve_model
        from app.text_encoder import TracedTextEncoder

        check_db(args)  # a database that cannot serve fails before torch is imported, as without the encoder
        model = TracedTextEncoder.open(resolve_model(args.model), **model_options(args)) or model
    return PhotoIndex.open(
        db=args.db, model=model, create=create, chroma_host=args.chroma_host,
        chroma_port=args.chroma_port, config=config, **model_options(args),
    )


def save_text_encoder(args, model) -> None:
    """Save the loaded model's text path for the next text search's fast start (no-op when not worth it)."""
    from app.config import resolve_model
    from app.text_encoder import TracedTextEncoder, save_text_encoder as save

    if not isinstance(model, TracedTextEncoder):
        save(model, resolve_model(args.model), **model_options(args))


def check_db(args, create: bool = False) -> None:
    """Fail now, before the model loads, if the database of --db/--chroma-* cannot serve."""
    from app.config import resolve_model
    from app.store import ChromaLocation, PhotoStore

    location = (ChromaLocation(host=args.chroma_host, port=args.chroma_port) if args.chroma_host
                else ChromaLocation(db_dir=os.fspath(args.db or default_db_dir())))
    PhotoStore.preflight(location, resolve_model(args.model), create=create, image_crops=args.image_crops)


def print_json(obj) -> None:
    print(json.dumps(obj, ensure_ascii=False), flush=True)


# --------------------------------------------------------------------------------------------- index


def add_index_arguments(p: argparse.ArgumentParser) -> None:
    defaults = IndexConfig()
    p.add_argument("roots", nargs="+", metavar="PHOTOS_DIR", help="photo folder(s), searched recursively")
    add_db_arguments(p)
    add_model_arguments(p)
    p.add_argument("--shard", default="0/1", metavar="I/N",
                   help="index only part I of N of the library (run N of these against one chroma server)")
    p.add_argument("--batch-size", type=at_least(1), default=defaults.batch_size,
                   help="photos per model call (default %(default)s)")
    p.add_argument("--workers", type=at_least(1), default=defaults.workers, help="decode threads (default %(default)s)")
    p.add_argument("--max-pixels", type=at_least(1), default=defaults.max_pixels,
                   help="skip images with more decoded pixels than this (decompression bombs; default %(default)s)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def cmd_index(args) -> int:
    from app.index import parse_shard

    shard = parse_shard(args.shard)
    config = IndexConfig(batch_size=args.batch_size, workers=args.workers, max_pixels=args.max_pixels)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    index = open_index(args, create=True, config=config)
    report = index.update(args.roots, shard=shard, progress=progress)
    save_text_encoder(args, index.model)
    if args.json:
        print_json(report.to_json())
        return 0
    print(f"added {report.added}, updated {report.updated}, removed {report.removed}, "
          f"unchanged {report.unchanged}, skipped {len(report.skipped)}; {report.total} photos indexed "
          f"({report.seconds:.1f} s)")
    for skip in report.skipped:
        print(f"  skipped {skip.path}: {skip.reason}" + (f" ({skip.detail})" if skip.detail else ""))
    return 0


# --------------------------------------------------------------------------------------------- search


def add_search_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", nargs="?", type=text, help="what to look for")
    p.add_argument("--image", metavar="PATH", help="find photos like this one (with TEXT: a composed query)")
    p.add_argument("--batch", metavar="QUERIES.jsonl",
                   help='run one {"text": ..., "image": ...} query per line; prints one JSON result per line')
    add_db_arguments(p)
    add_model_arguments(p)
    p.add_argument("-k", type=at_least(1), default=SearchConfig.k, help="number of results (default %(default)s)")
    p.add_argument("--min-score", type=number(-1, 1), default=None,
                   help="drop results below this cosine similarity, -1 to 1 (default: keep all k)")
    p.add_argument("--after", metavar="YYYY-MM-DD", help="taken on or after this day")
    p.add_argument("--before", metavar="YYYY-MM-DD", help="taken before this day")
    p.add_argument("--folder", metavar="DIR", help="only photos in this folder or below")
    p.add_argument("--camera", metavar="NAME", help="only photos from this camera (make, model or both)")
    p.add_argument("--sort", choices=("relevance", "newest", "oldest"), default="relevance",
                   help="order of the results that pass (default: relevance)")
    p.add_argument("--json", action="store_true", help="print JSON")


def cmd_search(args) -> int:
    from app.search import Filters, QueryError, search

    if args.batch is None and not args.text and not args.image:
        raise QueryError("give TEXT, --image PATH, both, or --batch QUERIES.jsonl")
    filters = Filters(after=args.after, before=args.before, folder=args.folder, camera=args.camera)
    filters.where()  # bad dates fail before the model loads
    lines = open_batch(args.batch) if args.batch is not None else None  # so does a batch file that is not text
    index = open_index(args, create=False, text_only=lines is None and args.image is None)

    def run(text, image) -> list:
        return search(index, text=text, image=image, k=args.k, min_score=args.min_score, filters=filters,
                      sort=args.sort)

    if lines is not None:
        return _search_batch(lines, run)
    hits = run(args.text, args.image)
    if args.json:
        print_json({"results": [h.to_json() for h in hits]})
    elif not hits:
        print("no matching photos")
    else:
        for h in hits:
            print(f"{h.score:.4f}  {h.date[:10]}  {h.path}")
    sys.stdout.flush()  # the results first; then, once, what makes the next search start fast
    save_text_encoder(args, index.model)
    return 0


def open_batch(path: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of a JSON-lines file (``-``: stdin). A file that cannot be read or is not
    UTF-8 text (a photo passed by mistake) is a QueryError, one line; a file is opened and its start
    checked now, so that this happens before the model loads."""
    import codecs

    from app.search import QueryError

    def not_text(line_no: int) -> QueryError:
        return QueryError(f"--batch {path}: line {line_no} is not UTF-8 text (a binary file?); give one JSON object "
                          "per line")

    try:
        source = sys.stdin.buffer if path == "-" else open(path, "rb")
        head = b"" if path == "-" else source.read(8192)
    except OSError as e:
        raise QueryError(f"cannot read --batch {path}: {e.strerror}") from None
    bad = head.find(b"\0")
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)  # a character cut at the end is fine
    except UnicodeDecodeError as e:
        bad = e.start if bad < 0 else min(bad, e.start)
    if bad >= 0:
        source.close()
        raise not_text(head.count(b"\n", 0, bad) + 1)
    if path != "-":
        source.seek(0)

    def lines() -> Iterator[tuple[int, str]]:
        with source:
            for line_no, raw in enumerate(source, 1):
                try:
                    if b"\0" in raw:
                        raise UnicodeError
                    yield line_no, raw.decode("utf-8")
                except UnicodeError:
                    raise not_text(line_no) from None

    return lines()


def batch_text(item: dict, key: str) -> str | None:
    """item[key] as a query text: absent/null, or a string that is valid Unicode (JSON can spell lone
    surrogates, which the tokenizer cannot encode)."""
    from app.search import QueryError

    value = item.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise QueryError(f'"{key}" must be a string')
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise QueryError(f'"{key}" is not valid Unicode text (it holds a lone surrogate)') from None
    return value


def _jsonl_batch(lines: Iterator[tuple[int, str]], handle: Callable[[dict], dict]) -> int:
    """One JSON line out per JSON-object line in (from open_batch); a bad line prints {"error": ...}
    and the batch goes on; exit 1 when any line failed."""
    from app.search import QueryError

    failures = 0
    for line_no, line in lines:
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            if not isinstance(item, dict):
                raise QueryError("each line must be a JSON object")
            print_json(handle(item))
        except (QueryError, json.JSONDecodeError) as e:
            failures += 1
            print_json({"error": f"line {line_no}: {e}"})
    return 1 if failures else 0


def _search_batch(lines: Iterator[tuple[int, str]], run: Callable) -> int:
    """`search --batch`: one {"text": ..., "image": ...} per line -> one {"results": [...]} per line."""
    return _jsonl_batch(lines, lambda q: {"results": [h.to_json() for h in run(batch_text(q, "text"),
                                                                              batch_text(q, "image"))]})


# --------------------------------------------------------------------------------------------- duplicates


def add_duplicates_arguments(p: argparse.ArgumentParser) -> None:
    add_db_arguments(p)
    add_model_arguments(p)
    p.add_argument("--threshold", type=number(-1, 1), default=SearchConfig.near_duplicate_threshold,
                   help="cosine similarity at or above which photos are near duplicates, -1 to 1 (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON")


def cmd_duplicates(args) -> int:
    from app.search import find_duplicates

    index = open_index(args, create=False)
    exact, near = find_duplicates(index, near_threshold=args.threshold)
    if args.json:
        print_json({"exact": [g.to_json() for g in exact], "near": [g.to_json() for g in near]})
        return 0
    print(f"{len(exact)} groups of exact copies, {len(near)} groups of near duplicates")
    for group in exact + near:
        print(f"{group.kind} ({group.score:.3f}):")
        for path in group.paths:
            print(f"  {path}")
    return 0


# --------------------------------------------------------------------------------------------- ask


# AnswerConfig fields whose default comes from the model's calibration (app.calibration) when it has one.
CALIBRATED_ASK_OPTIONS = ("min_score", "rerank_weight", "min_yes", "min_attribute", "min_size_margin", "context_margin")


def add_ask_arguments(p: argparse.ArgumentParser) -> None:
    from app.config import AnswerConfig

    defaults = AnswerConfig()
    p.add_argument("question", nargs="?", type=text, help="a question about your photos")
    p.add_argument("--image", metavar="PATH", help="ask about this photo (no retrieval)")
    p.add_argument("--batch", metavar="QUESTIONS.jsonl",
                   help='answer one {"question": ..., "image": ...} per line ("image" optional); one JSON answer per line')
    p.add_argument("--session", metavar="FILE",
                   help="a conversation: earlier turns are read from FILE (created if missing) and this one is added, "
                        'so follow-ups ("When was it taken?") refer to the photo of the previous answer')
    add_db_arguments(p)
    add_model_arguments(p)
    p.add_argument("-k", type=at_least(1), default=defaults.k,
                   help="photos retrieved per question (default %(default)s)")
    p.add_argument("--max-context", type=at_least(1), default=defaults.max_context,
                   help="at most this many photos shown to the model (default %(default)s)")
    p.add_argument("--rerank-top", type=at_least(0), default=defaults.rerank_top,
                   help="re-rank this many of the best photos with the model, 0: off (default %(default)s)")
    for name, what, kind in (("min_score", "no photo scoring at least this (-1 to 1): no answer", number(-1, 1)),
                             ("rerank_weight", "weight (>= 0) of the model's log-likelihood when re-ranking",
                              number(0)),
                             ("min_yes", "P(yes), 0 to 1, a photo needs for each thing the question names",
                              number(0, 1)),
                             ("min_attribute", "P(its color or shape), 0 to 1, asked about a thing named by both",
                              number(0, 1)),
                             ("min_size_margin", "nats the named size must win by", number()),
                             ("context_margin", "show photos within this score (0 to 2) of the best", number(0, 2))):
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                       help=f"{what} (default: the model's calibrated value, else {getattr(defaults, name)})")
    p.add_argument("--no-check", action="store_true", help="cite photos without checking them with the model first")
    p.add_argument("--no-decompose", action="store_true",
                   help='retrieve by the whole question\'s embedding, not by each thing "the photo with ..." names')
    p.add_argument("--after", metavar="YYYY-MM-DD", help="only photos taken on or after this day")
    p.add_argument("--before", metavar="YYYY-MM-DD", help="only photos taken before this day")
    p.add_argument("--folder", metavar="DIR", help="only photos in this folder or below")
    p.add_argument("--json", action="store_true", help='print {"answer", "summary", "refused", "missing", "sources", "closest"}')


def cmd_ask(args) -> int:
    import dataclasses

    from app.search import Filters, QueryError

    if args.batch is None and not args.question:
        raise QueryError('give a QUESTION, or --batch QUESTIONS.jsonl')
    filters = Filters(after=args.after, before=args.before, folder=args.folder)
    filters.where()  # bad dates fail before the model loads
    lines = open_batch(args.batch) if args.batch is not None else None  # so does a batch file that is not text
    if args.batch is None and args.image is None:
        check_db(args)  # and a database that cannot answer (before torch is imported: in a second)

    from app.answer import Answerer
    from app.calibration import model_settings
    from app.conversation import Session
    from app.model import load_model

    session = Session.open(args.session) if args.session else None  # a bad session file fails before the model
    # One model for everything: questions about a photo need no index, so it is opened on first need.
    model = load_model(args.model, **model_options(args))
    settings = model_settings(model)
    chosen = {n: getattr(args, n) for n in CALIBRATED_ASK_OPTIONS if getattr(args, n) is not None}
    config = dataclasses.replace(settings.answer, k=args.k, max_context=args.max_context, rerank_top=args.rerank_top,
                                 decompose=not args.no_decompose, check_evidence=not args.no_check, **chosen)
    answerer = Answerer(model, None, config, vocab=settings.vocab)

    def run(question, image, echo: bool = False):
        if image is None and answerer.index is None:
            from app.index import PhotoIndex

            answerer.index = PhotoIndex.open(db=args.db, model=model, create=False, chroma_host=args.chroma_host,
                                             chroma_port=args.chroma_port, image_crops=args.image_crops)
        history = session.turns if session else ()
        result, sent = None, ""
        for result in answerer.stream(question, k=args.k, filters=filters, image=image, history=history):
            if echo and not result.done:  # show the answer as it is generated (a terminal only)
                sys.stdout.write(result.text[len(sent):])
                sys.stdout.flush()
                sent = result.text
        if echo and sent:
            sys.stdout.write("\r\033[K")  # the streamed text gives way to the summary
        if session is not None:
            session.add(result)
        return result

    if lines is not None:
        return _ask_batch(lines, run)
    if args.json:
        print_json(run(args.question, args.image).to_json())
        return 0
    print_answer(run(args.question, args.image, echo=sys.stdout.isatty()))
    return 0


def print_answer(result) -> None:
    """The text output of `ask`: the answer with the photos it rests on, or a refusal with the closest photos."""
    print(result.summary, flush=True)
    if result.kind == "search":
        for s in result.sources:
            print(f"  {s.score:.4f}  {s.date}  {s.path}")
    elif result.refused:
        if result.closest:
            print("closest matches (not answers):")
        for s in result.closest:
            print(f"  {s.score:.4f}  {s.date}  {s.path}")
    else:
        for s in result.sources:
            mark = f"[{s.n}]" if s.n else "   "
            score = f"{s.score:.4f}" if s.score is not None else "      "
            print(f"  {mark} {score}  {s.date}  {s.path}" + ("" if s.cited else "  (not cited)"))


def _ask_batch(lines: Iterator[tuple[int, str]], run: Callable) -> int:
    """`ask --batch`: one {"question": ..., "image": ...} per line -> one answer object per line."""
    from app.search import QueryError

    def handle(item: dict) -> dict:
        if not isinstance(item.get("question"), str):
            raise QueryError('each line must be a JSON object with a "question" string')
        return run(batch_text(item, "question"), batch_text(item, "image")).to_json()

    return _jsonl_batch(lines, handle)


# --------------------------------------------------------------------------------------------- serve, demo


def add_serve_arguments(p: argparse.ArgumentParser, demo: bool = False) -> None:
    add_db_arguments(p)
    add_model_arguments(p)
    p.add_argument("--host", default=LOOPBACK,
                   help="address to listen on (default %(default)s: this machine only; 0.0.0.0 exposes your photos)")
    p.add_argument("--port", type=port, default=DEFAULT_PORT, help="port (default %(default)s)")
    p.add_argument("--auth", metavar="USER:PASS", help="require this login")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    limits = UIConfig()
    p.add_argument("--ui-limit", action="append", default=[], metavar="NAME=VALUE",
                   help="change one of the web server's limits (repeatable; app.config.UIConfig): "
                        + ", ".join(f"{name}={value}" for name, value in vars(limits).items()))
    if demo:
        from app.demo import DEMO_N

        p.add_argument("--album", metavar="DIR", help="sample album folder (default: sample-album next to the db)")
        p.add_argument("--album-size", type=at_least(1), default=DEMO_N,
                       help="photos in the sample album (default %(default)s)")


def _serve(args, before_launch=None) -> int:
    from app.config import with_overrides

    if args.chroma_host:
        raise ConfigError("the web UI uses a database folder (--db), not a chroma server")
    limits = with_overrides(UIConfig(), args.ui_limit)
    db = args.db or str(default_db_dir())
    check_db(args, create=True)  # a --db that cannot hold a database fails before gradio and the model load

    from app.service import PhotoService
    from app.ui import ServeOptions, parse_auth, serve

    options = ServeOptions(host=args.host, port=args.port, share=args.share, auth=parse_auth(args.auth), limits=limits)

    def factory(thumbs_dir):
        service = PhotoService(db, args.model, thumbs_dir=thumbs_dir, index_config=IndexConfig(), **model_options(args))
        if before_launch is not None:
            before_launch(service)
        return service

    return serve(factory, options)


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    add_serve_arguments(p, demo=True)


def cmd_serve(args) -> int:
    return _serve(args)


def cmd_demo(args) -> int:
    from app.demo import default_album_dir, ensure_album, index_with_progress

    photos = ensure_album(args.album or default_album_dir(args.db), n=args.album_size)
    return _serve(args, before_launch=lambda service: index_with_progress(service, photos))


# --------------------------------------------------------------------------------------------- main

# name -> (help, add_arguments, run). New subcommands (ask, serve, demo) register here.
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "index": ("index (or update the index of) photo folders", add_index_arguments, cmd_index),
    "search": ("search indexed photos by text and/or image", add_search_arguments, cmd_search),
    "duplicates": ("list exact and near-duplicate photos", add_duplicates_arguments, cmd_duplicates),
    "ask": ("answer a question from your photos (or about one photo), citing them", add_ask_arguments, cmd_ask),
    "serve": ("run the web UI (binds 127.0.0.1 unless told otherwise)", add_serve_arguments, cmd_serve),
    "demo": ("create a sample album, index it and serve the web UI (make run)", add_demo_arguments, cmd_demo),
}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m app", description="Local photo search with one CAFe model.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def _stdout_closed() -> int:
    """stdout was closed by its reader (`... | head`): stop quietly. Point fd 1 at /dev/null so the
    interpreter's last flush at exit does not print a second BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (tests capture stdout)
        pass
    return EXIT_STDOUT_CLOSED


def main(argv: list[str] | None = None) -> int:
    apply_quiet_env()
    args = build_parser().parse_args(argv)
    _, _, run = COMMANDS[args.command]
    try:
        code = run(args)
        sys.stdout.flush()  # a reader that went away shows up here, not in the interpreter's exit
        return code
    except KeyboardInterrupt:
        print("interrupted; work done so far is saved, rerun to continue", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _stdout_closed()
    except user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


# Commands that write nothing but their output (and an ask --session file, closed before it returns): once
# that is flushed they leave with os._exit, skipping the interpreter's teardown of torch, transformers and
# chromadb (about 2 s on a 2-core machine, longer than the search itself). Commands that write the index
# (index, serve, demo) exit normally.
FAST_EXIT = {"search", "duplicates", "ask"}


def run() -> None:
    """`python -m app`: main(), then exit (fast for FAST_EXIT commands)."""
    argv = sys.argv[1:]
    code = main(argv)
    if argv and argv[0] in FAST_EXIT:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
