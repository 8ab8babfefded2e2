"""training.replay_vocab: a stage replayed without a model counts exactly the words the trainer wrote."""

from __future__ import annotations

import json

from cafe_core.vocab import VOCAB_FILE
from training.replay_vocab import main, replay

from .conftest import settings, train_in_process

RECIPE = {"p_grounded": 0.5, "p_pair": 0.5, "p_hard": 0.5, "position_turns": 1, "extra_turns": 1}


def test_replay_counts_what_the_trainer_counted(train_data, tmp_path):
    trainer = train_in_process(settings(train_data, tmp_path / "run", max_steps=3, batch_size=2, grad_accum=2,
                                        **RECIPE))
    written = json.loads((trainer.final / VOCAB_FILE).read_text())
    counts = replay(trainer.cfg)
    assert counts.texts == written["texts"] > 3 * 4
    assert dict(counts.counts) == written["words"]
    # The CLI merges the stages it is given into the folder's file.
    (trainer.final / VOCAB_FILE).unlink()
    (tmp_path / "stage.yaml").write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in trainer.cfg.__dict__.items()
                                                  if isinstance(v, (int, float, str, bool))))
    assert main([str(trainer.final), str(tmp_path / "stage.yaml"), str(tmp_path / "stage.yaml")]) == 0
    twice = json.loads((trainer.final / VOCAB_FILE).read_text())
    assert twice["texts"] == 2 * written["texts"]
    assert twice["words"] == {w: 2 * n for w, n in written["words"].items()}
