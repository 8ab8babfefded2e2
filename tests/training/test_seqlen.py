"""max_seq_len: conversation lengths counted as collate encodes them, turns dropped from the end in whole
exchanges, samples whose first exchange does not fit skipped and counted, and the trainer's batches
never longer than the cap."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from cafe_core import prompts
from cafe_core.family import family_for
from cafe_core.forward import collate
from cafe_core.inputs import PromptEncoder
from cafe_core.prompts import Turn
from cafe_core.tiny import build_tiny
from data.errors import DataFormatError
from training.config import ConfigError, load_config
from training.seqlen import SequenceBudget

from .conftest import read_metrics, settings, train_in_process


@dataclass
class Sample:
    id: str
    image: object
    conversation: list
    caption: str | None


def _image(seed: int, w: int, h: int) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _turns(n_exchanges: int) -> list[Turn]:
    turns = []
    for i in range(n_exchanges):
        turns += [Turn("user", f"What is on the left in photo number {i}?"), Turn("assistant", f"a red circle {i}")]
    return turns


@pytest.fixture(scope="module")
def encoders():
    out = {}
    for preset in ("llava-onevision", "smolvlm", "llava"):
        model, processor = build_tiny(preset)
        out[preset] = PromptEncoder(processor, family_for(model.config))
    return out


@pytest.mark.parametrize("preset", ["llava-onevision", "smolvlm", "llava"])
def test_length_is_what_collate_encodes(encoders, preset):
    enc = encoders[preset]
    budget = SequenceBudget(enc, 10_000)
    cases = [
        Sample("a", _image(0, 32, 32), _turns(1), "x"),
        Sample("b", _image(1, 90, 40), _turns(3), "x"),  # other anyres grids / tile counts
        Sample("c", _image(2, 30, 100), _turns(2), "x"),
        Sample("d", None, _turns(2), None),  # text only
    ]
    for s in cases:
        batch = collate(enc, [s], with_embeddings=False)
        images = [] if s.image is None else [s.image]
        assert budget.length(s.conversation, images) == int(batch.conv["attention_mask"].sum()), s.id
    # Several photos in one prompt (LLaVA-OneVision reads base views then: a different image length).
    images = [_image(3, 90, 40), _image(4, 40, 90)]
    text = prompts.conversation_prompt(_turns(2), n_images=2, chat=enc.chat)
    expected = int(enc.encode([text], images)["attention_mask"].sum())
    assert budget.length(_turns(2), images) == expected


def test_fit_drops_whole_exchanges_from_the_end_and_skips_what_cannot_fit(encoders):
    enc = encoders["llava-onevision"]
    image = _image(0, 90, 40)
    lengths = [SequenceBudget(enc, 1).length(_turns(k), [image]) for k in (1, 2, 3, 4)]
    assert lengths == sorted(lengths) and len(set(lengths)) == 4

    budget = SequenceBudget(enc, lengths[1] + 1)  # room for two exchanges, not three
    sample = Sample("s", image, _turns(4), "a red circle")
    fitted = budget.fit(sample)
    assert fitted.conversation == _turns(2)  # the first two exchanges, in order
    assert fitted.image is image and fitted.caption == "a red circle" and sample.conversation == _turns(4)
    assert budget.length(fitted.conversation, [image]) <= budget.max_len

    short = Sample("t", image, _turns(1), "x")
    assert budget.fit(short) is short  # fits: untouched

    odd = Sample("u", image, _turns(2) + [Turn("user", "and on the right?")], "x")  # a dangling question
    assert SequenceBudget(enc, lengths[1]).fit(odd).conversation == _turns(2)

    tight = SequenceBudget(enc, lengths[0] - 1)  # not even the first exchange
    assert tight.fit(Sample("v", image, _turns(3), "x")) is None
    assert tight.fit(Sample("w", image, _turns(1), "x")) is None
    assert budget.counts() == {"too_long_truncated": 1, "too_long_skipped": 0}
    assert tight.counts() == {"too_long_truncated": 0, "too_long_skipped": 2}


def test_max_seq_len_must_not_be_negative():
    with pytest.raises(ConfigError, match="max_seq_len"):
        load_config(None, ["data=x", "max_seq_len=-1"]).validate()


def _trainer(values: dict):
    from training.trainer import Trainer

    cfg = load_config(None, [f"{k}={json.dumps(v) if isinstance(v, dict) else v}" for k, v in values.items()])
    return Trainer(cfg)


def test_trainer_batches_stay_under_the_cap_and_metrics_count_truncations(train_data, tmp_path):
    # tiny:llava writes 64 image tokens per photo; four QA turns plus a caption turn run past 150 tokens.
    base = settings(train_data, tmp_path / "uncapped", max_qa_turns=4, caption_turn_prob=1.0)
    first, _, _ = next(_trainer(base).batches())
    cap = int(first.conv["attention_mask"].sum(1).max()) - 20
    capped = _trainer({**base, "out_dir": str(tmp_path / "capped"), "max_seq_len": cap})
    batches = capped.batches()
    for _ in range(5):
        batch, _, _ = next(batches)
        assert int(batch.conv["attention_mask"].sum(1).max()) <= cap
        assert ((batch.conv["labels"][:, 1:] != -100).sum(1) > 0).all()  # every row keeps supervised answers
    assert capped.budget.truncated > 0 and capped.budget.skipped == 0

    trainer = train_in_process({**base, "out_dir": str(tmp_path / "run"), "max_seq_len": cap, "max_steps": 2})
    records = read_metrics(trainer.out)
    assert len(records) == 2 and records[-1]["too_long_truncated"] > 0 and records[-1]["too_long_skipped"] == 0
    assert all(np.isfinite(r["loss"]) for r in records)


def test_a_cap_below_one_photo_skips_every_sample_with_a_clear_error(train_data, tmp_path):
    values = settings(train_data, tmp_path / "none", max_seq_len=40, max_steps=1)  # < 64 image tokens
    with pytest.raises(DataFormatError, match="over max_seq_len 40"):
        train_in_process(values)
