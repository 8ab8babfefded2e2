"""Evaluator tests: metric functions on hand-made inputs with known answers, then the real thing
(saved tiny model + a 12-photo sample-world album) in-process and through `python -m training eval`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.synth import write_album
from data.world import PhotoSpec, WorldObject, captions
from training.eval_metrics import (
    HEADLINE_METRICS,
    describe_scores,
    modality_stats,
    normalize_answer,
    pair_queries,
    parse_world_text,
    parse_yes_no,
    pope_metrics,
    recall_at_k,
    spec_matches,
    stratified_sample,
    vqa_scores,
    world_relevance,
)
from training.evaluate import EvalConfig, evaluate, load_eval_set, main

REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


# ---------------------------------------------------------------------------------------------
# Retrieval metrics
# ---------------------------------------------------------------------------------------------
def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_recall_perfect_embeddings_is_one():
    emb = _unit(np.random.default_rng(0).normal(size=(10, 16)))
    r = recall_at_k(emb @ emb.T, np.eye(10, dtype=bool))
    assert r == {1: 1.0, 5: 1.0, 10: 1.0}


def test_recall_shuffled_embeddings_counts_fixed_points():
    emb = _unit(np.random.default_rng(1).normal(size=(10, 32)))
    perm = np.array([0, 1, 2, 4, 3, 6, 5, 8, 9, 7])  # 3 fixed points
    texts = emb[perm]  # text i looks exactly like image perm[i]
    r = recall_at_k(texts @ emb.T, np.eye(10, dtype=bool), ks=(1,))
    assert r[1] == pytest.approx(0.3)


def test_recall_rank_i_for_query_i():
    # Query i's only relevant candidate sits at rank i: R@k = k / Q.
    q = 10
    scores = np.tile(-np.arange(q, dtype=float), (q, 1))  # candidate c has score -c for every query
    relevant = np.eye(q, dtype=bool)
    assert recall_at_k(scores, relevant) == {1: pytest.approx(0.1), 5: pytest.approx(0.5), 10: pytest.approx(1.0)}


def test_recall_any_relevant_counts_and_unanswerable_queries_are_left_out():
    scores = np.array([[0.9, 0.8, 0.1], [0.1, 0.2, 0.3], [0.5, 0.4, 0.3]])
    relevant = np.array([[False, True, True], [False, False, False], [False, False, True]])
    # query 0: best relevant at rank 1; query 1: no relevant (left out); query 2: rank 2.
    assert recall_at_k(scores, relevant, ks=(1, 2, 3)) == {1: 0.0, 2: 0.5, 3: 1.0}
    with pytest.raises(ValueError):
        recall_at_k(scores, np.zeros_like(relevant))
    with pytest.raises(ValueError):
        recall_at_k(scores, relevant[:2])


def test_recall_ties_break_by_candidate_index():
    scores = np.zeros((2, 4))
    relevant = np.array([[True, False, False, False], [False, False, False, True]])
    assert recall_at_k(scores, relevant, ks=(1, 3, 4)) == {1: 0.5, 3: 0.5, 4: 1.0}


# ---------------------------------------------------------------------------------------------
# Sample-world language and relevance
# ---------------------------------------------------------------------------------------------
def _spec(sid, objects, background="gray"):
    objs = tuple(WorldObject(shape=s, color=c, size=z, position=p) for c, s, z, p in objects)
    return PhotoSpec(id=sid, objects=objs, background=background, date=datetime(2020, 1, 1), width=256, height=256)


A = _spec("a", [("red", "circle", "small", "left")])
B = _spec("b", [("red", "circle", "small", "left"), ("blue", "star", "large", "right")])
C = _spec("c", [("red", "circle", "small", "middle")])
D = _spec("d", [("red", "circle", "large", "left")])
E = _spec("e", [("red", "circle", "small", "left")], background="black")


def test_relevance_uses_every_attribute_the_caption_names():
    specs = [A, B, C, D, E]
    with_pos = parse_world_text("a small red circle on the left, on a gray background")
    no_pos = parse_world_text("a photo of a small red circle on a gray background")
    counted = parse_world_text("one object on a gray background: a small red circle")
    obj = parse_world_text("a red circle")
    rel = world_relevance([with_pos, no_pos, counted, obj], specs)
    assert rel.tolist() == [
        [True, True, False, False, False],  # position, size and background named
        [True, True, True, False, False],  # no position: C (middle) matches too
        [True, False, True, False, False],  # "one object" rules out B (two objects)
        [True, True, True, True, True],  # just the object
    ]


def test_pair_queries_name_two_objects_and_every_photo_with_both_is_relevant():
    f = _spec("f", [("blue", "star", "small", "left"), ("red", "circle", "large", "right")])  # same kinds, other order
    g = _spec("g", [("red", "circle", "small", "left"), ("blue", "square", "large", "middle"),
                    ("blue", "star", "small", "right")])
    texts, relevant = pair_queries([A, B, C, f, g])
    # A and C show one object: no pair query; B's leftmost two, f's, g's leftmost two.
    assert texts == ["a red circle and a blue star", "a blue star and a red circle", "a red circle and a blue square"]
    assert relevant.tolist() == [
        [False, True, False, True, True],  # every photo with a red circle and a blue star, whatever the sizes
        [False, True, False, True, True],
        [False, False, False, False, True],
    ]
    # Pair recall on hand-built scores: query 0 finds B second, query 1 f first, query 2 g only fourth.
    scores = np.array([[0.9, 0.8, 0.1, 0.0, 0.0], [0.0, 0.2, 0.0, 0.9, 0.1], [0.3, 0.2, 0.5, 0.0, 0.1]])
    assert recall_at_k(scores, relevant, ks=(1, 2)) == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3)}


def test_position_accuracy_is_its_own_key():
    m = vqa_scores(["a small red circle", "nothing", "a large red circle", "blue"],
                   ["a small red circle", "nothing", "a small red circle", "blue"],
                   ["position", "position", "position", "color_of_shape"])
    assert m["vqa_position_accuracy"] == pytest.approx(2 / 3) and m["n_vqa_position"] == 3
    assert m["vqa_accuracy"] == pytest.approx(3 / 4)


def test_parse_every_caption_paraphrase():
    for spec in (A, B, _spec("f", [("green", "square", "large", "left"), ("purple", "star", "small", "middle"),
                                   ("orange", "triangle", "small", "right")], "white")):
        for cap in captions(spec):
            w = parse_world_text(cap)
            assert w.background == spec.background, cap
            assert {(o.color, o.shape, o.size) for o in w.objects} == {(o.color, o.shape, o.size) for o in spec.objects}, cap
            if "left" in cap or "right" in cap or "middle" in cap:
                assert {(o.color, o.shape, o.position) for o in w.objects} == {(o.color, o.shape, o.position) for o in spec.objects}, cap
            assert spec_matches(w, spec), cap


def test_describe_scores():
    right = "a small red circle on the left and a large blue star on the right, on a gray background"
    wrong_bg = "a small red circle on the left and a large blue star on the right, on a black background"
    missing = "a small red circle on a gray background"
    wrong_pos = "a small red circle on the right and a large blue star on the left, on a gray background"
    s = describe_scores([right, wrong_bg, missing, wrong_pos, "hello"], [B] * 5)
    assert s["describe_accuracy"] == pytest.approx(1 / 5)
    assert s["describe_background_accuracy"] == pytest.approx(3 / 5)
    # F1 per description: 1, 1, 2/3 (p=1, r=1/2), 1, 0
    assert s["describe_object_f1"] == pytest.approx((3 + 2 / 3) / 5)


# ---------------------------------------------------------------------------------------------
# VQA and POPE
# ---------------------------------------------------------------------------------------------
def test_normalize_answer_and_vqa_scores():
    assert normalize_answer("  A small, red Circle.\n") == "a small red circle"
    s = vqa_scores(["Red.", "blue", "Two", "three", "yes"], ["red", "green", "two", "two", "yes"],
                   ["color_of_shape", "color_of_shape", "count_objects", "count_objects", "exists"])
    assert s["vqa_accuracy"] == pytest.approx(3 / 5)
    assert s["vqa_color_of_shape_accuracy"] == 0.5
    assert s["vqa_exists_accuracy"] == 1.0
    assert s["vqa_macro_accuracy"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert s["n_vqa"] == 5 and s["n_vqa_count_objects"] == 2


def test_parse_yes_no():
    assert parse_yes_no("Yes, there is.") == "yes"
    assert parse_yes_no("no") == "no"
    assert parse_yes_no("I think yes") is None
    assert parse_yes_no("\n\n") is None


def test_pope_metrics_on_a_known_confusion():
    truth = [True] * 4 + [False] * 6
    pred = [True, True, True, False, True, False, False, False, False, False]  # tp 3, fn 1, fp 1, tn 5
    m = pope_metrics(pred, truth)
    assert m == pytest.approx({"accuracy": 0.8, "precision": 0.75, "recall": 0.75, "f1": 0.75, "yes_ratio": 0.4, "n": 10})
    never_yes = pope_metrics([False] * 10, truth)
    assert never_yes == pytest.approx({"accuracy": 0.6, "precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 0.0, "n": 10})
    always_yes = pope_metrics([True] * 10, truth)
    assert always_yes["precision"] == pytest.approx(0.4) and always_yes["recall"] == 1.0
    assert always_yes["f1"] == pytest.approx(2 * 0.4 / 1.4)


# ---------------------------------------------------------------------------------------------
# Modality gap and sampling
# ---------------------------------------------------------------------------------------------
def test_modality_stats():
    img = np.eye(3)[:2] * 5.0  # not unit length on purpose: the function normalises
    aligned = modality_stats(img, np.eye(3)[:2], np.eye(2, dtype=bool))
    assert aligned == pytest.approx({"paired_cosine": 1.0, "unpaired_cosine": 0.0, "modality_gap": 1.0,
                                     "modality_centroid_distance": 0.0})
    swapped = modality_stats(img, np.eye(3)[[1, 0]], np.eye(2, dtype=bool))
    assert swapped["modality_gap"] == pytest.approx(-1.0)
    # Texts all on a third axis: cosine 0 everywhere, centroids sqrt(0.5 + 1) apart.
    apart = modality_stats(img, np.tile(np.eye(3)[2], (2, 1)), np.eye(2, dtype=bool))
    assert apart["modality_gap"] == pytest.approx(0.0)
    assert apart["modality_centroid_distance"] == pytest.approx(np.sqrt(1.5))


def test_stratified_sample_is_balanced_and_deterministic():
    items = [("a", i) for i in range(20)] + [("b", i) for i in range(3)] + [("c", i) for i in range(10)]
    key = [t for t, _ in items]
    s = stratified_sample(items, key, 12, seed=0)
    assert s == stratified_sample(items, key, 12, seed=0)
    assert s != stratified_sample(items, key, 12, seed=1)
    counts = {t: sum(x[0] == t for x in s) for t in "abc"}
    assert counts == {"a": 5, "b": 3, "c": 4} or counts == {"a": 4, "b": 3, "c": 5}
    assert stratified_sample(items, key, None) == items
    assert len(stratified_sample(items, key, 3)) == 3 and {x[0] for x in stratified_sample(items, key, 3)} == {"a", "b", "c"}


# ---------------------------------------------------------------------------------------------
# The real evaluator
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    from cafe_core.tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("eval_model") / "tiny", "llava", seed=0)


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    from cafe_core import CafeModel

    return CafeModel.load(tiny_model_dir, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def album(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval_album") / "test"
    write_album(out, n=12, seed=3, split="test", short_side=64)
    return out


def test_world_relevance_on_a_real_album_contains_the_pairs(album):
    es = load_eval_set(album)
    rel = world_relevance([parse_world_text(t) for t in es.texts], es.specs)
    assert rel.shape == (12, 12) and rel.diagonal().all()


def test_evaluate_in_process_retrieval_and_pope(tiny_model, album, tmp_path):
    tiny_model.model.train()  # as the trainer would hand it over mid-training
    m = evaluate(tiny_model, album, EvalConfig(tasks=("retrieval", "pope"), max_questions=8, max_new_tokens=3,
                                                   progress=False, out_dir=tmp_path))
    assert tiny_model.model.training  # mode restored
    assert m["n_retrieval_images"] == 12 and m["n_retrieval_texts"] == 12
    for k in ("t2i_recall@1", "t2i_recall@10", "i2t_recall@5", "t2i_object_recall@1", "pope_adversarial_f1"):
        assert 0.0 <= m[k] <= 1.0, k
    assert m["t2i_recall@10"] >= m["t2i_recall@5"] >= m["t2i_recall@1"]
    assert "vqa_accuracy" not in m
    assert sum(m[f"n_pope_{s}"] for s in ("random", "popular", "adversarial")) > 0
    assert json.loads((tmp_path / "eval.json").read_text())["meta"]["kind"] == "world"
    for png in ("eval.png", "modality_gap.png"):
        with Image.open(tmp_path / png) as im:
            assert im.format == "PNG" and im.width > 200


def test_evaluate_skips_an_unreadable_photo(tiny_model, album, tmp_path):
    copy = tmp_path / "album"
    shutil.copytree(album, copy)
    victim = sorted((copy / "photos").glob("*.jpg"))[4]
    victim.write_bytes(b"not a jpeg")
    m = evaluate(tiny_model, copy, EvalConfig(tasks=("retrieval",), progress=False))
    assert m["n_unusable_photos"] == 1
    assert m["n_retrieval_images"] == 11 and m["n_retrieval_texts"] == 11


def test_evaluate_image_caption_pairs_groups_captions_by_image(tiny_model, album, tmp_path):
    # COCO-like: two captions per image; a text's only relevant image is its own.
    rows = []
    for rec in json.loads((album / "ground_truth.json").read_text())["photos"][:5]:
        rows += [{"image": str(album / rec["image"]), "caption": c} for c in rec["captions"][:2]]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    es = load_eval_set(pairs)
    assert es.kind == "pairs" and len(es.image_paths) == 5 and es.text_image == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    m = evaluate(tiny_model, pairs, EvalConfig(progress=False))
    assert m["n_retrieval_texts"] == 10 and m["n_retrieval_images"] == 5
    assert "t2i_object_recall@1" not in m and "vqa_accuracy" not in m and "pope_random_accuracy" not in m
    assert -1.0 <= m["modality_gap"] <= 1.0


def test_cli_rejects_a_missing_data_folder(tmp_path, capsys):
    assert main(["--model", "tiny:llava", "--data", str(tmp_path / "nope")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_cli_eval_json_end_to_end(tiny_model_dir, album, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "training", "eval", "--model", str(tiny_model_dir), "--data", str(album),
         "--json", "--max-questions", "20", "--out", str(out), "--device", "cpu",
         # An untrained model never stops on its own: short budgets keep the test fast.
         "--max-new-tokens", "6", "--describe-max-new-tokens", "16"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads(proc.stdout)  # stdout is exactly one JSON object (progress goes to stderr)
    required = {"t2i_object_recall@1", "t2i_recall@1", "t2i_recall@5", "i2t_recall@1", "i2t_recall@5", "vqa_accuracy",
                "pope_random_accuracy", "pope_popular_accuracy", "pope_adversarial_accuracy", "pope_adversarial_f1",
                "modality_gap"}
    assert required <= set(m) and set(HEADLINE_METRICS) <= set(m)
    for k in required - {"modality_gap"}:
        assert 0.0 <= m[k] <= 1.0, (k, m[k])
    assert -2.0 <= m["modality_gap"] <= 2.0
    for k, v in m.items():  # every per-split / per-type rate too
        if k.startswith(("pope_", "vqa_", "describe_")) or "recall@" in k:
            assert 0.0 <= v <= 1.0, (k, v)
    assert m["n_vqa"] + m["n_describe"] == 20
    assert m["meta"]["split"] == "test" and m["n_photos"] == 12
    assert "answering" in proc.stderr  # the progress bar
    saved = json.loads((out / "eval.json").read_text())
    assert saved["t2i_recall@1"] == m["t2i_recall@1"]
    for png in ("eval.png", "modality_gap.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
