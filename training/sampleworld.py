"""Sample-world training recipe: caption granularity, tags for false-negative masking, turn sampling.

Only used with ``augment: sampleworld`` on a ``python -m data synth`` folder (it reads ground_truth.json).
Every random choice is seeded by (seed, epoch, sample id), so a resumed run sees the same samples.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cafe_core import prompts
from data.formats import Turn
from data.vocab import BACKGROUNDS, COLORS, SHAPES
from data.world import ALBUM_FORMS, PhotoSpec, referring_question

# Tag space for false-negative masking: one bit per (color, shape) object kind, one per background.
TAGS = [f"{c} {s}" for c in COLORS for s in SHAPES] + [f"bg:{b}" for b in BACKGROUNDS]
TAG_INDEX = {t: i for i, t in enumerate(TAGS)}


def _tags(names) -> np.ndarray:
    v = np.zeros(len(TAGS), dtype=np.float32)
    for n in names:
        v[TAG_INDEX[n]] = 1.0
    return v


@dataclass
class AugmentedSample:
    id: str
    image: object
    conversation: list
    caption: str
    text_tags: np.ndarray
    image_tags: np.ndarray


class SampleWorldAugment:
    """Rewrites each sample's contrastive caption and conversation from the sample world's ground truth.

    Contrastive text: a full caption paraphrase (prob ``p_full``) or a short object query
    ("a red circle", "a small red circle on the left"), the kind people type; tags say which objects
    (and background) the text names, so photos that also match are not used as negatives.
    Conversation: the describe turn with prob ``caption_turn_prob``, plus ``max_qa_turns`` random turns
    drawn from the photo's QA pairs and POPE probes (yes/no questions ground the answers in the image).
    """

    def __init__(self, data_dir: str | Path, seed: int, max_qa_turns: int = 6, caption_turn_prob: float = 0.3,
                 p_full: float = 0.5, p_grounded: float = 0.0, p_question: float = 0.0, p_yes_no: float = 0.0):
        gt_path = Path(data_dir) / "ground_truth.json"
        if not gt_path.exists():
            raise FileNotFoundError(f"augment: sampleworld needs {gt_path} (a `python -m data synth` folder)")
        self.photos = {p["id"]: p for p in json.loads(gt_path.read_text())["photos"]}
        self.seed, self.max_qa_turns, self.caption_turn_prob, self.p_full = seed, max_qa_turns, caption_turn_prob, p_full
        self.p_grounded, self.p_question, self.p_yes_no = p_grounded, p_question, p_yes_no

    @staticmethod
    def _referring(gt: dict, rng: random.Random) -> tuple[tuple, list[str]]:
        """A description of the photo by 1-2 of its objects (sometimes with size) + the tags it names."""
        objs = rng.sample(gt["objects"], min(len(gt["objects"]), rng.choice((1, 1, 2))))
        sized = rng.random() < 0.3
        reqs = tuple((o["color"], o["shape"], o["size"] if sized else None) for o in objs)
        return reqs, [f"{o['color']} {o['shape']}" for o in objs]

    def _rng(self, epoch: int, sample_id: str) -> random.Random:
        h = hashlib.sha256(f"{self.seed}|{epoch}|{sample_id}".encode()).digest()
        return random.Random(int.from_bytes(h[:8], "little"))

    def __call__(self, sample, epoch: int):
        gt = self.photos.get(sample.id)
        if gt is None or sample.image is None:
            return sample
        rng = self._rng(epoch, sample.id)
        objects = gt["objects"]
        image_tags = _tags([f"{o['color']} {o['shape']}" for o in objects] + [f"bg:{gt['background']}"])
        r = rng.random()
        if r < self.p_question:  # the questions people ask the album retrieve their photo too
            reqs, named = self._referring(gt, rng)
            caption, _ = referring_question(PhotoSpec.from_dict(gt), reqs, rng.choice(ALBUM_FORMS), rng)
        elif r < self.p_question + self.p_full:
            caption = rng.choice(gt["captions"])
            named = [f"{o['color']} {o['shape']}" for o in objects] + [f"bg:{gt['background']}"]
        else:
            o = rng.choice(objects)
            form = rng.randrange(4)
            caption = [
                f"a {o['color']} {o['shape']}",
                f"a {o['size']} {o['color']} {o['shape']}",
                f"a {o['color']} {o['shape']} on the {o['position']}" if o["position"] != "middle" else f"a {o['color']} {o['shape']} in the middle",
                f"a {o['color']} {o['shape']} on a {gt['background']} background",
            ][form]
            named = [f"{o['color']} {o['shape']}"] + ([f"bg:{gt['background']}"] if form == 3 else [])
        if self.p_yes_no > 0:  # balanced yes/no turns: the answer must come from the image, not the prior
            pool = [(q["question"], q["answer"]) for q in gt["qa"] if q["qtype"] not in ("describe", "exists")]
            yes_no = [(q["question"], q["answer"]) for q in gt["qa"] if q["qtype"] == "exists"]
            yes_no += [(p["question"], p["answer"]) for p in gt.get("pope", [])]
            by_answer = {a: [qa for qa in yes_no if qa[1] == a] for a in ("yes", "no")}
        else:
            pool = [(q["question"], q["answer"]) for q in gt["qa"] if q["qtype"] != "describe"]
            pool += [(p["question"], p["answer"]) for p in gt.get("pope", [])]
        turns: list[Turn] = []
        if rng.random() < self.p_grounded:  # the app's grounded-answer format, one photo cited as [1]
            reqs, _ = self._referring(gt, rng)
            q, a = referring_question(PhotoSpec.from_dict(gt), reqs, rng.choice(ALBUM_FORMS), rng)
            content = prompts.grounded_user_content(q, [gt["date"][:10]])
            turns += [Turn("user", content), Turn("assistant", prompts.cite(a, 1))]
        if rng.random() < self.caption_turn_prob:
            describe = next((q for q in gt["qa"] if q["qtype"] == "describe"), None)
            if describe:
                turns += [Turn("user", describe["question"]), Turn("assistant", rng.choice(gt["captions"]))]
        picked = rng.sample(pool, min(self.max_qa_turns, len(pool)))
        if self.p_yes_no > 0:
            for i in range(len(picked)):
                if rng.random() < self.p_yes_no:
                    answers = by_answer["yes" if rng.random() < 0.5 else "no"] or yes_no
                    picked[i] = rng.choice(answers)
        for q, a in picked:
            turns += [Turn("user", q), Turn("assistant", a)]
        return AugmentedSample(sample.id, sample.image, turns, caption, _tags(named), image_tags)
