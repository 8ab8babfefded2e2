"""Evaluate a CAFe model: retrieval, VQA, POPE hallucination and the modality gap.

    python -m training eval --model MODEL --data DATA_DIR [--json] [--out OUT_DIR]
        [--max-photos N] [--max-questions N] [--batch-size B] [--device auto|cpu|cuda] ...

DATA_DIR is either a sample-world album (`python -m data synth` output: ground_truth.json +
photos/) or any image-caption set that `data.dataset.open_dataset` reads (LLaVA JSON, JSONL/CSV
pairs, sidecar folder). On a sample-world album every metric is computed; on other sets only
retrieval and the modality gap (there, a text's relevant image is just its paired image).

In-process (trainer, ablation benchmark): ``evaluate(model, data_dir, EvalConfig(...)) -> dict``.
The dict is flat: numeric metrics plus one ``meta`` dict (model, data, kind, split, seconds).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

from data.atomic import atomic_write_json
from data.dataset import open_dataset
from data.images import load_image
from data.errors import DataFormatError
from data.queries import image_tags, matches, pair_query
from data.synth import GROUND_TRUTH_FILE, load_ground_truth
from data.vocab import ALL_PAIRS, DESCRIBE_QUESTION
from data.world import PhotoSpec
from training.eval_metrics import (
    HEADLINE_METRICS,
    KS,
    OBJECT_QUERY,
    POPE_SPLITS,
    describe_scores,
    modality_stats,
    parse_world_text,
    parse_yes_no,
    pope_metrics,
    recall_at_k,
    stratified_sample,
    vqa_scores,
    world_relevance,
)

log = logging.getLogger(__name__)

EVAL_JSON = "eval.json"
EVAL_CHART = "eval.png"
MODALITY_PLOT = "modality_gap.png"
TASKS: tuple[str, ...] = ("retrieval", "vqa", "pope")
DESCRIBE_QTYPE = "describe"


@dataclass
class EvalConfig:
    """What to evaluate and how much of it.

    max_questions caps the VQA questions and, separately, the POPE probes (deterministic sample,
    stratified by question type / probe kind); None = all. max_photos keeps the first N photos.
    """

    out_dir: Path | None = None  # eval.json + eval.png + modality_gap.png go here when set
    max_photos: int | None = None
    max_questions: int | None = 400
    batch_size: int | None = None  # embedding batch size; None = the model's
    tasks: tuple[str, ...] = TASKS
    max_new_tokens: int = 16  # short answers ("a small red circle" is the longest)
    describe_max_new_tokens: int = 64
    max_side: int | None = 1536  # decode big photos at reduced size; models resize far below this
    seed: int = 0
    progress: bool = True  # progress bars on stderr
    scatter_lines: int = 12  # pairs joined by a line in the modality-gap scatter
    scatter_max_points: int = 600  # per modality, so the PNG stays readable on large sets

    def __post_init__(self):
        for name in ("max_photos", "max_questions", "batch_size"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {v!r}")
        if self.max_new_tokens < 1 or self.describe_max_new_tokens < 1:
            raise ValueError("max_new_tokens and describe_max_new_tokens must be >= 1")
        self.tasks = tuple(self.tasks)
        unknown = set(self.tasks) - set(TASKS)
        if unknown or not self.tasks:
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {self.tasks}")
        if self.out_dir is not None:
            self.out_dir = Path(self.out_dir)


# ---------------------------------------------------------------------------------------------
# The evaluation set
# ---------------------------------------------------------------------------------------------
@dataclass
class EvalSet:
    """Images and texts to evaluate. For sample-world albums, photos/specs hold the ground truth
    (aligned with image_paths) and texts are the photos' captions (text i belongs to photo i)."""

    kind: str  # "world" | "pairs"
    root: Path
    image_paths: list[Path]
    texts: list[str]
    text_image: list[int]  # index into image_paths of each text's paired image
    photos: list[dict] = field(default_factory=list)
    specs: list[PhotoSpec] = field(default_factory=list)
    split: str | None = None


def load_eval_set(data_dir: str | Path, max_photos: int | None = None) -> EvalSet:
    """Read DATA_DIR as a sample-world album (when it has ground_truth.json) or an image-caption set."""
    root = Path(data_dir)
    if root.is_file() and root.name == GROUND_TRUTH_FILE:
        root = root.parent
    if (root / GROUND_TRUTH_FILE).is_file():
        return _load_world(root, max_photos)
    return _load_pairs(root, max_photos)


def _load_world(root: Path, max_photos: int | None) -> EvalSet:
    gt_path = root / GROUND_TRUTH_FILE
    try:
        gt = load_ground_truth(root)
        photos = gt["photos"][:max_photos]
        specs = [PhotoSpec.from_dict(p) for p in photos]
        paths = [root / p["image"] for p in photos]
        texts = [p["caption"] for p in photos]
        for p in photos:
            p["qa"], p["pope"]  # noqa: B018 - fail here, with the file name, not mid-evaluation
    except json.JSONDecodeError as e:
        raise DataFormatError(gt_path, f"invalid JSON: {e.msg}", line=e.lineno) from e
    except (KeyError, TypeError, ValueError) as e:
        raise DataFormatError(gt_path, f"not a sample-world ground truth file ({type(e).__name__}: {e})") from e
    if not photos:
        raise DataFormatError(gt_path, "no photos")
    return EvalSet("world", root, paths, texts, list(range(len(photos))), photos, specs, gt.get("split"))


def _load_pairs(root: Path, max_photos: int | None) -> EvalSet:
    ds = open_dataset(root)  # raises DataFormatError on malformed / empty sets
    image_index: dict[Path, int] = {}
    texts: list[str] = []
    text_image: list[int] = []
    for rec in ds.records:
        cap = rec.contrastive_caption
        if rec.image_path is None or not cap:
            continue
        key = rec.image_path.resolve()
        if key not in image_index:
            if max_photos is not None and len(image_index) >= max_photos:
                continue
            image_index[key] = len(image_index)
        texts.append(cap)
        text_image.append(image_index[key])
    if not texts:
        raise DataFormatError(root, "no record has both an image and a caption; nothing to retrieve")
    return EvalSet("pairs", root, list(image_index), texts, text_image)


class _PhotoLoader:
    """Opens photos upright and RGB, remembering failures (logged once) and the last photo opened."""

    def __init__(self, paths: Sequence[Path], max_side: int | None):
        self.paths, self.max_side = paths, max_side
        self.failed: set[int] = set()
        self._last: tuple[int, Image.Image] | None = None

    def get(self, i: int) -> Image.Image | None:
        if i in self.failed:
            return None
        if self._last is not None and self._last[0] == i:
            return self._last[1]
        try:
            im = load_image(self.paths[i], self.max_side)
        except Exception as e:  # noqa: BLE001 - one unreadable photo is skipped, not fatal
            log.warning("skipping unusable photo %s: %s: %s", self.paths[i], type(e).__name__, e)
            self.failed.add(i)
            return None
        self._last = (i, im)
        return im


def _progress(iterable=None, **kw):
    from tqdm import tqdm

    return tqdm(iterable, file=sys.stderr, dynamic_ncols=True, **kw)


@contextmanager
def _eval_mode(model) -> Iterator[None]:
    """Run in eval mode and restore the module's previous mode (the trainer calls us mid-training)."""
    was_training = model.model.training
    model.model.eval()
    try:
        yield
    finally:
        model.model.train(was_training)


# ---------------------------------------------------------------------------------------------
# Retrieval and modality gap
# ---------------------------------------------------------------------------------------------
def _embed_photos(model, loader: _PhotoLoader, cfg: EvalConfig) -> tuple[np.ndarray, list[int]]:
    """Embeddings of every loadable photo, streamed in batches; returns (emb, indices of those photos)."""
    bs = cfg.batch_size or model.batch_size
    chunks, ok = [], []
    bar = _progress(total=len(loader.paths), desc="embedding photos", unit="photo", disable=not cfg.progress)
    for start in range(0, len(loader.paths), bs):
        idx = range(start, min(start + bs, len(loader.paths)))
        batch = [(i, im) for i in idx if (im := loader.get(i)) is not None]
        if batch:
            chunks.append(model.embed_images([im for _, im in batch], batch_size=bs))
            ok += [i for i, _ in batch]
        bar.update(len(idx))
    bar.close()
    if not ok:
        raise DataFormatError(loader.paths[0].parent, f"none of the {len(loader.paths)} photos could be opened")
    return np.concatenate(chunks), ok


def _retrieval(model, es: EvalSet, loader: _PhotoLoader, cfg: EvalConfig) -> tuple[dict, tuple]:
    """Recall@k both ways (+ object queries on sample-world sets) and modality statistics.
    Returns (metrics, (image_emb, text_emb, pairs)) for the scatter plot."""
    img, ok = _embed_photos(model, loader, cfg)
    new_index = {old: new for new, old in enumerate(ok)}
    keep = [t for t, i in enumerate(es.text_image) if i in new_index]
    texts = [es.texts[t] for t in keep]
    text_image = np.array([new_index[es.text_image[t]] for t in keep])
    paired = text_image[:, None] == np.arange(len(ok))[None, :]  # (T, I)

    object_pairs: list[tuple[str, str]] = []
    if es.kind == "world":
        specs = [es.specs[i] for i in ok]
        relevant = world_relevance([parse_world_text(t) for t in texts], specs)
        if not relevant[paired].all():  # a caption must match its own photo; if not, the parser is wrong
            log.warning("%d captions do not match their own photo's ground truth; counting the pair as relevant",
                        int((~relevant[paired]).sum()))
            relevant |= paired
        present = {o.pair for s in specs for o in s.objects}
        object_pairs = [p for p in ALL_PAIRS if p in present]
    else:
        relevant = paired

    pair_queries = [pair_query(s) for s in specs if len(s.objects) >= 2] if es.kind == "world" else []
    queries = texts + [OBJECT_QUERY.format(color=c, shape=s) for c, s in object_pairs] + [q.text for q in pair_queries]
    all_txt = model.embed_texts(queries, batch_size=cfg.batch_size, progress=cfg.progress)
    txt = all_txt[: len(texts)]
    obj = all_txt[len(texts): len(texts) + len(object_pairs)]
    pairs_emb = all_txt[len(texts) + len(object_pairs):]

    scores = txt @ img.T  # (T, I) cosine: embeddings are L2-normalised
    m: dict[str, float] = {}
    for k, v in recall_at_k(scores, relevant).items():
        m[f"t2i_recall@{k}"] = v
    for k, v in recall_at_k(scores.T, relevant.T).items():
        m[f"i2t_recall@{k}"] = v
    if object_pairs:
        obj_rel = np.array([[any(o.pair == p for o in s.objects) for s in specs] for p in object_pairs])
        for k, v in recall_at_k(obj @ img.T, obj_rel).items():
            m[f"t2i_object_recall@{k}"] = v
        m["n_object_queries"] = len(object_pairs)
    if pair_queries:
        tags = [image_tags(s) for s in specs]
        pair_rel = np.array([[matches(q.tags, t) for t in tags] for q in pair_queries])
        for k, v in recall_at_k(pairs_emb @ img.T, pair_rel).items():
            m[f"t2i_pair_recall@{k}"] = v
        m["n_pair_queries"] = len(pair_queries)
    m["n_retrieval_images"] = len(ok)
    m["n_retrieval_texts"] = len(texts)
    m["mean_relevant_images_per_text"] = float(relevant.sum(1).mean())
    if len(ok) > 1:
        m.update(modality_stats(img, txt, paired))
    else:
        log.warning("modality gap needs at least 2 photos; skipped")
    pairs = [(int(text_image[t]), t) for t in range(len(texts))]
    return m, (img, txt, pairs)


# ---------------------------------------------------------------------------------------------
# VQA, describe and POPE (sample-world only)
# ---------------------------------------------------------------------------------------------
def _answer_all(model, loader: _PhotoLoader, requests: set[tuple[int, str, int]], cfg: EvalConfig) -> dict:
    """Greedy answers for (photo index, question, max_new_tokens) requests, photo by photo."""
    answers: dict[tuple[int, str, int], str | None] = {}
    for req in _progress(sorted(requests), desc="answering", unit="q", disable=not cfg.progress):
        i, question, max_new = req
        im = loader.get(i)
        answers[req] = None if im is None else model.generate(question, [im], max_new_tokens=max_new)
    return answers


def _qa_metrics(model, es: EvalSet, loader: _PhotoLoader, cfg: EvalConfig) -> dict:
    vqa_items: list[tuple[int, dict]] = []
    pope_items: list[tuple[int, dict]] = []
    if "vqa" in cfg.tasks:
        everything = [(i, qa) for i, p in enumerate(es.photos) for qa in p["qa"]]
        vqa_items = stratified_sample(everything, [qa["qtype"] for _, qa in everything], cfg.max_questions, cfg.seed)
    if "pope" in cfg.tasks:
        everything = [(i, pr) for i, p in enumerate(es.photos) for pr in p["pope"]]
        pope_items = stratified_sample(everything, [pr["kind"] for _, pr in everything], cfg.max_questions, cfg.seed)

    def budget(qa: dict) -> int:
        return cfg.describe_max_new_tokens if qa.get("qtype") == DESCRIBE_QTYPE else cfg.max_new_tokens

    requests = {(i, q["question"], budget(q)) for i, q in vqa_items + pope_items}
    answers = _answer_all(model, loader, requests, cfg)

    def answer(i: int, q: dict) -> str | None:
        return answers[(i, q["question"], budget(q))]

    m: dict[str, float] = {}
    vqa_items = [(i, qa) for i, qa in vqa_items if answer(i, qa) is not None]  # drop unreadable photos
    short = [(i, qa) for i, qa in vqa_items if qa["qtype"] != DESCRIBE_QTYPE]
    m.update(vqa_scores([answer(i, qa) for i, qa in short], [qa["answer"] for _, qa in short], [qa["qtype"] for _, qa in short]))
    desc = [(i, qa) for i, qa in vqa_items if qa["qtype"] == DESCRIBE_QTYPE]
    if desc:
        m.update(describe_scores([answer(i, qa) for i, qa in desc], [es.specs[i] for i, _ in desc]))
        m["n_describe"] = len(desc)

    pope_items = [(i, pr) for i, pr in pope_items if answer(i, pr) is not None]
    if pope_items:
        parsed = [parse_yes_no(answer(i, pr)) for i, pr in pope_items]
        m["pope_unparsed_ratio"] = sum(p is None for p in parsed) / len(parsed)
        positives = [(p == "yes", True) for p, (_, pr) in zip(parsed, pope_items) if pr["kind"] == "positive"]
        for split in POPE_SPLITS:
            negatives = [(p == "yes", False) for p, (_, pr) in zip(parsed, pope_items) if pr["kind"] == split]
            if not negatives or not positives:
                continue
            pred, truth = zip(*(positives + negatives))
            for k, v in pope_metrics(pred, truth).items():
                m[f"n_pope_{split}" if k == "n" else f"pope_{split}_{k}"] = v
    return m


# ---------------------------------------------------------------------------------------------
# The entry points
# ---------------------------------------------------------------------------------------------
def evaluate(model, data_dir: str | Path, cfg: EvalConfig | None = None) -> dict:
    """Evaluate ``model`` (a CafeModel) on DATA_DIR; see the module doc for what is measured.

    Returns a flat dict of numbers (recall, VQA, POPE, modality keys, n_* counts) plus
    ``meta`` = {model, data, kind, split, seconds}. With cfg.out_dir set, also writes
    eval.json (the same dict), eval.png (headline bars) and modality_gap.png there.
    """
    cfg = cfg or EvalConfig()
    t0 = time.perf_counter()
    es = load_eval_set(data_dir, cfg.max_photos)
    loader = _PhotoLoader(es.image_paths, cfg.max_side)
    metrics: dict = {"n_photos": len(es.image_paths)}
    scatter = None
    with _eval_mode(model):
        if "retrieval" in cfg.tasks:
            m, scatter = _retrieval(model, es, loader, cfg)
            metrics.update(m)
        if es.kind == "world" and {"vqa", "pope"} & set(cfg.tasks):
            metrics.update(_qa_metrics(model, es, loader, cfg))
        elif es.kind != "world" and {"vqa", "pope"} & set(cfg.tasks) and "retrieval" not in cfg.tasks:
            raise ValueError(f"{data_dir} is not a sample-world album (no {GROUND_TRUTH_FILE}): only retrieval can be evaluated there")
    metrics["n_unusable_photos"] = len(loader.failed)
    metrics["meta"] = {
        "model": getattr(model, "name", "<in-memory>"),
        "data": str(data_dir),
        "kind": es.kind,
        "split": es.split,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if cfg.out_dir is not None:
        write_outputs(metrics, cfg.out_dir, scatter, cfg)
    return metrics


def write_outputs(metrics: dict, out_dir: Path, scatter: tuple | None, cfg: EvalConfig) -> None:
    """eval.json, eval.png and (when embeddings are given) modality_gap.png in out_dir, each atomically."""
    from training.plots import plot_eval, plot_modality_gap

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / EVAL_JSON, metrics)
    meta = metrics.get("meta", {})
    title = f"{Path(str(meta.get('model', 'model'))).name} on {Path(str(meta.get('data', ''))).name}"
    plot_eval(metrics, out_dir / EVAL_CHART, title=title)
    if scatter is not None:
        img, txt, pairs = scatter
        plot_modality_gap(img, txt, out_dir / MODALITY_PLOT, pairs=pairs, n_lines=cfg.scatter_lines,
                          max_points=cfg.scatter_max_points, title=f"paired embeddings (PCA): {title}", seed=cfg.seed)


def _fmt(v) -> str:
    return "   -  " if v is None else (f"{v:6.3f}" if isinstance(v, float) else f"{v:6d}")


def format_report(metrics: dict) -> str:
    """A readable plain-text table of an evaluate() result."""
    meta = metrics.get("meta", {})
    g = metrics.get
    lines = [f"model {meta.get('model')}  data {meta.get('data')}  ({meta.get('kind')}"
             + (f", split {meta['split']}" if meta.get("split") else "") + f", {g('n_photos')} photos, {meta.get('seconds')} s)"]
    if "t2i_recall@1" in metrics:
        lines += ["", "Retrieval          " + "".join(f"  R@{k:<4}" for k in KS) + "  queries"]
        for name, prefix, n in (("text -> image", "t2i_recall", "n_retrieval_texts"),
                                ("image -> text", "i2t_recall", "n_retrieval_images"),
                                ("object -> image", "t2i_object_recall", "n_object_queries"),
                                ("pair -> image", "t2i_pair_recall", "n_pair_queries")):
            if f"{prefix}@1" in metrics:
                lines.append(f"  {name:<17}" + "".join(f"  {_fmt(g(f'{prefix}@{k}'))}" for k in KS) + f"  {g(n)}")
    if "paired_cosine" in metrics:
        lines += ["", f"Modality  paired cos {g('paired_cosine'):.3f}  unpaired cos {g('unpaired_cosine'):.3f}  "
                      f"gap {g('modality_gap'):+.3f}  centroid distance {g('modality_centroid_distance'):.3f}"]
    if "vqa_accuracy" in metrics:
        lines += ["", f"VQA accuracy {g('vqa_accuracy'):.3f} (macro {g('vqa_macro_accuracy'):.3f}, n={g('n_vqa')})"]
        for k in sorted(metrics):
            if k.startswith("vqa_") and k.endswith("_accuracy") and k not in ("vqa_accuracy", "vqa_macro_accuracy"):
                qt = k[4:-9]
                lines.append(f"  {qt:<17} {_fmt(g(k))}  n={g(f'n_vqa_{qt}')}")
    if "describe_accuracy" in metrics:
        lines.append(f"  {'describe':<17} {_fmt(g('describe_accuracy'))}  n={g('n_describe')}  (object F1 "
                     f"{g('describe_object_f1'):.3f}, background {g('describe_background_accuracy'):.3f})")
    if any(f"pope_{s}_accuracy" in metrics for s in POPE_SPLITS):
        cols = ("accuracy", "precision", "recall", "f1", "yes_ratio")
        lines += ["", "POPE          " + "".join(f"{c:>10}" for c in cols) + "       n"]
        for s in POPE_SPLITS:
            if f"pope_{s}_accuracy" in metrics:
                lines.append(f"  {s:<12}" + "".join(f"    {_fmt(g(f'pope_{s}_{c}'))}" for c in cols) + f"  {g(f'n_pope_{s}'):6d}")
        lines.append(f"  unparsed answers (neither yes nor no): {g('pope_unparsed_ratio'):.3f}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m training eval``."""
    p = argparse.ArgumentParser(prog="python -m training eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="hub id, local folder or tiny:<preset>")
    p.add_argument("--data", required=True, help="sample-world album (python -m data synth output) or image-caption set")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--out", type=Path, help=f"write {EVAL_JSON}, {EVAL_CHART} and {MODALITY_PLOT} here")
    p.add_argument("--max-photos", type=int, help="evaluate the first N photos only")
    p.add_argument("--max-questions", type=int, default=EvalConfig.max_questions,
                   help="cap on VQA questions and, separately, on POPE probes (stratified sample; 0 = all)")
    p.add_argument("--batch-size", type=int, help="embedding batch size")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated subset of {','.join(TASKS)}")
    p.add_argument("--max-new-tokens", type=int, default=EvalConfig.max_new_tokens, help="for short answers")
    p.add_argument("--describe-max-new-tokens", type=int, default=EvalConfig.describe_max_new_tokens,
                   help='for "Describe the photo." answers')
    p.add_argument("--seed", type=int, default=0, help="seed of the question sample")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    p.add_argument("--quantization", choices=["8bit", "4bit"], help="load the model quantized (needs bitsandbytes)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (``python -m training eval ...``); returns the exit code."""
    from cafe_core import CafeError, CafeModel

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["eval"]:  # tolerate being handed the sub-command name too
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        cfg = EvalConfig(
            out_dir=args.out,
            max_photos=args.max_photos,
            max_questions=args.max_questions or None,
            batch_size=args.batch_size,
            tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip()),
            max_new_tokens=args.max_new_tokens,
            describe_max_new_tokens=args.describe_max_new_tokens,
            seed=args.seed,
            progress=not args.no_progress,
        )
        if not Path(args.data).exists():
            raise DataFormatError(args.data, "no such file or folder")
        model = CafeModel.load(args.model, device=args.device, dtype=args.dtype, quantization=args.quantization,
                               batch_size=args.batch_size or 8)
        metrics = evaluate(model, args.data, cfg)
    except (CafeError, DataFormatError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(metrics) if args.json else format_report(metrics))
    if args.out:
        print(f"wrote {args.out / EVAL_JSON}, {args.out / EVAL_CHART}"
              + (f", {args.out / MODALITY_PLOT}" if "paired_cosine" in metrics else ""), file=sys.stderr)
    return 0


__all__ = ["EvalConfig", "EvalSet", "evaluate", "format_report", "load_eval_set", "main", "HEADLINE_METRICS"]

if __name__ == "__main__":
    sys.exit(main())
