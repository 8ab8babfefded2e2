"""The parts of an evaluation that run the model: retrieval (+ modality gap) and answers (VQA, describe, POPE).

Each returns a flat dict of metrics, keyed by training.eval_metrics' key functions; ``cfg`` is the
caller's training.evaluate.EvalConfig.
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from typing import Iterator

import numpy as np

from data.errors import DataFormatError
from data.vocab import ALL_PAIRS

from .eval_data import EvalSet, PhotoLoader
from .eval_metrics import (
    OBJECT_QUERY,
    POPE_SPLITS,
    describe_scores,
    modality_stats,
    pair_queries,
    parse_world_text,
    parse_yes_no,
    pope_count_key,
    pope_key,
    pope_metrics,
    recall_at_k,
    recall_key,
    stratified_sample,
    vqa_scores,
    world_relevance,
)

log = logging.getLogger("training.evaluate")
DESCRIBE_QTYPE = "describe"


def _progress(iterable=None, **kw):
    from tqdm import tqdm

    return tqdm(iterable, file=sys.stderr, dynamic_ncols=True, **kw)


@contextmanager
def eval_mode(model) -> Iterator[None]:
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
def _embed_photos(model, loader: PhotoLoader, cfg) -> tuple[np.ndarray, list[int]]:
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


def retrieval_metrics(model, es: EvalSet, loader: PhotoLoader, cfg) -> tuple[dict, tuple]:
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

    pair_texts, pair_rel = pair_queries(specs) if es.kind == "world" else ([], None)
    queries = texts + [OBJECT_QUERY.format(color=c, shape=s) for c, s in object_pairs] + pair_texts
    all_txt = model.embed_texts(queries, batch_size=cfg.batch_size, progress=cfg.progress)
    txt = all_txt[: len(texts)]
    obj = all_txt[len(texts): len(texts) + len(object_pairs)]
    pairs_emb = all_txt[len(texts) + len(object_pairs):]

    scores = txt @ img.T  # (T, I) cosine: embeddings are L2-normalised
    m: dict[str, float] = {}
    for k, v in recall_at_k(scores, relevant).items():
        m[recall_key("t2i", k)] = v
    for k, v in recall_at_k(scores.T, relevant.T).items():
        m[recall_key("i2t", k)] = v
    if object_pairs:
        obj_rel = np.array([[any(o.pair == p for o in s.objects) for s in specs] for p in object_pairs])
        for k, v in recall_at_k(obj @ img.T, obj_rel).items():
            m[recall_key("t2i_object", k)] = v
        m["n_object_queries"] = len(object_pairs)
    if pair_texts:
        for k, v in recall_at_k(pairs_emb @ img.T, pair_rel).items():
            m[recall_key("t2i_pair", k)] = v
        m["n_pair_queries"] = len(pair_texts)
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
def _answer_all(model, loader: PhotoLoader, requests: set[tuple[int, str, int]], cfg) -> dict:
    """Greedy answers for (photo index, question, max_new_tokens) requests, photo by photo."""
    answers: dict[tuple[int, str, int], str | None] = {}
    for req in _progress(sorted(requests), desc="answering", unit="q", disable=not cfg.progress):
        i, question, max_new = req
        im = loader.get(i)
        answers[req] = None if im is None else model.generate(question, [im], max_new_tokens=max_new)
    return answers


def answer_metrics(model, es: EvalSet, loader: PhotoLoader, cfg) -> dict:
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
                m[pope_count_key(split) if k == "n" else pope_key(split, k)] = v
    return m
