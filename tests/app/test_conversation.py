"""app.conversation.Session: the `ask --session FILE` conversation file."""

from __future__ import annotations

import json

import pytest

from app.answer import Answer, Source
from app.config import ConfigError
from app.conversation import SESSION_VERSION, Session


def answered(question: str, photo: str) -> Answer:
    return Answer(question, text="white [1]", sources=[Source(photo, 0.8, "2017-05-26", 1)], done=True,
                  parts=["a red circle"])


def test_turns_survive_a_reopen_and_two_writers_each_leave_a_whole_file(tmp_path):
    path = tmp_path / "talk.json"
    one, two = Session.open(path), Session.open(path)
    one.add(answered("q1", "/p/1.jpg"))
    two.add(answered("q2", "/p/2.jpg"))  # started from the same (empty) conversation: the later write wins
    turns = Session.open(path).turns
    assert [(t.question, t.photos, t.parts) for t in turns] == [("q2", ["/p/2.jpg"], ["a red circle"])]
    one.add(answered("q3", "/p/3.jpg"))
    assert [t.question for t in Session.open(path).turns] == ["q1", "q3"]
    assert [p.name for p in tmp_path.iterdir()] == ["talk.json"]  # no temp files left behind


def test_a_file_of_another_version_or_kind_is_refused(tmp_path):
    path = tmp_path / "talk.json"
    path.write_text(json.dumps({"version": SESSION_VERSION + 1, "turns": []}))
    with pytest.raises(ConfigError, match="version"):
        Session.open(path)
    path.write_text("[]")
    with pytest.raises(ConfigError, match="not a conversation file"):
        Session.open(path)


def test_a_place_it_cannot_write_is_a_clear_error(tmp_path):
    (tmp_path / "notes").write_text("a file where the session's folder would be")
    session = Session.open(tmp_path / "notes" / "talk.json")
    with pytest.raises(ConfigError, match="cannot save the conversation"):
        session.add(answered("q", "/p/1.jpg"))
