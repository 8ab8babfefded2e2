"""The web UI's flows through its API with gradio_client, against a real `python -m app serve` process."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.app.ui_server import BROKEN_NAME, UI_ALBUM_N, needs_shipped_model

pytestmark = pytest.mark.timeout(300)

# gradio_client inputs, in the order of each endpoint's components.
NO_FILTERS = ("", "", None, 0.0)  # after, before, folder, threshold


@pytest.fixture(scope="module")
def client(ui_server):
    from gradio_client import Client

    return Client(ui_server.url, verbose=False, download_files=False)


@pytest.fixture(scope="module")
def indexed(client, ui_server):
    """The album indexed through the Library tab's endpoint: (status, counts, skips)."""
    status, counts, skips, *_ = client.predict(str(ui_server.photos), api_name="/index_folder")
    return status, counts, skips


def red_circle(spec: dict) -> bool:
    return any(o["color"] == "red" and o["shape"] == "circle" for o in spec["objects"])


def test_api_names_are_stable(client):
    names = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert {"/index_folder", "/reindex", "/library_status", "/search", "/find_similar", "/pick_for_chat", "/chat",
            "/load_model", "/stats"} <= names


def test_index_reports_counts_and_skips(indexed, client, ui_server):
    status, counts, skips = indexed
    assert f"{UI_ALBUM_N} photos indexed" in counts, counts
    assert "skipped 1" in status, status
    rows = skips["data"]
    assert [Path(r[0]).name for r in rows] == [BROKEN_NAME]
    assert rows[0][1] == "not-an-image"
    # Rerun: incremental, nothing read again.
    status2, counts2, _, *_ = client.predict(str(ui_server.photos), api_name="/index_folder")
    assert f"unchanged {UI_ALBUM_N}" in status2 and "added 0" in status2, status2
    assert client.predict(api_name="/stats")["photos"] == UI_ALBUM_N


def test_second_client_sees_the_same_index(indexed, ui_server):
    from gradio_client import Client

    other = Client(ui_server.url, verbose=False, download_files=False)  # a second browser tab
    status, counts, skips = other.predict(api_name="/library_status")
    assert f"{UI_ALBUM_N} photos indexed" in counts
    assert "indexed" in status


def test_search_returns_gallery_and_details(indexed, client, ui_server):
    gallery, results, status, selected, _ = client.predict("a red circle", None, *NO_FILTERS, 8, api_name="/search")
    assert len(gallery) == len(results) == 8
    assert status == "8 photos"
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    for item, r in zip(gallery, results):
        assert Path(r["photo"]).parent == ui_server.photos
        assert item["caption"].startswith(f"{r['score']:.3f}") and Path(r["photo"]).name in item["caption"]
    assert selected == ""  # a new search clears the selection


@needs_shipped_model
def test_search_top_result_is_a_red_circle(indexed, client, ui_server):
    _, results, *_ = client.predict("a red circle", None, *NO_FILTERS, 5, api_name="/search")
    assert red_circle(ui_server.photo_spec(results[0]["photo"])), results[0]


def test_search_filters_and_threshold(indexed, client, ui_server):
    _, results, *_ = client.predict("a red circle", None, "", "", None, 0.0, 40, api_name="/search")
    # Threshold: only scores at or above it.
    cut = results[len(results) // 2]["score"]
    _, above, *_ = client.predict("a red circle", None, "", "", None, cut, 40, api_name="/search")
    assert above and all(r["score"] >= cut for r in above) and len(above) < len(results)
    # Dates: photos taken before the median date.
    dates = sorted(r["date"][:10] for r in results)
    mid = dates[len(dates) // 2]
    _, early, *_ = client.predict("a red circle", None, "", mid, None, 0.0, 40, api_name="/search")
    assert early and all(r["date"][:10] < mid for r in early)
    # A bad date is a clear error, not a crash.
    with pytest.raises(Exception, match="YYYY-MM-DD"):
        client.predict("a red circle", None, "yesterday", "", None, 0.0, 5, api_name="/search")


def test_find_similar_and_image_query(indexed, client, ui_server):
    from gradio_client import handle_file

    _, results, *_ = client.predict("a red circle", None, *NO_FILTERS, 3, api_name="/search")
    target = results[1]["photo"]
    _, similar, *_ = client.predict(target, *NO_FILTERS, 3, api_name="/find_similar")
    assert similar[0]["photo"] == target and similar[0]["score"] > 0.999
    # "More like this" with an uploaded copy of the photo finds the photo itself.
    _, by_upload, *_ = client.predict("", handle_file(target), *NO_FILTERS, 3, api_name="/search")
    assert by_upload[0]["photo"] == target


def test_chat_grounded_answer_streams_with_sources(indexed, client, ui_server):
    q = ui_server.ground_truth["album_questions"][0]
    job = client.submit(q["question"], None, "", [], 10, 0.0, 3, 0.2, 0, api_name="/chat")  # up to 3 photos
    updates = list(job)
    history, cited, answer, message, status = job.result()
    assert len(updates) >= 2  # the answer streams: several updates, not one
    assert message == ""  # the question box is cleared
    assert status.startswith("Answered from")
    assert history[0]["role"] == "user" and q["question"] in history[0]["content"][0]["text"]
    assert history[-1]["role"] == "assistant"
    assert 1 <= len(answer["sources"]) <= 3
    assert all(Path(s["photo"]).parent == ui_server.photos for s in answer["sources"])
    # Every cited source appears in the cited gallery.
    cited_sources = [s for s in answer["sources"] if s["cited"]]
    assert len(cited) == len(cited_sources)


def test_chat_decompose_setting_chooses_how_the_question_retrieves(indexed, client, ui_server):
    """Settings' checkbox: off, a question retrieves by its own embedding (the Search tab's top photo for
    it); on, by each thing "the photo with ..." names, which changes the photo shown first."""
    def top(text):
        _, results, *_ = client.predict(text, None, *NO_FILTERS, 1, api_name="/search")
        return results[0]["photo"]

    def shown_first(question, decompose):
        *_, answer, _, _ = client.predict(question, None, "", [], 10, 0.0, 1, 0.0, 0, decompose, api_name="/chat")
        return answer["sources"][0]["photo"]

    questions = ui_server.ground_truth["album_questions"][:12]
    off = [shown_first(q["question"], False) for q in questions]
    on = [shown_first(q["question"], True) for q in questions]
    assert off == [top(q["question"]) for q in questions]
    assert on != off


@needs_shipped_model
def test_chat_cites_a_photo_with_the_shipped_model(indexed, client, ui_server):
    q = ui_server.ground_truth["album_questions"][0]
    history, cited, answer, _, _ = client.predict(q["question"], None, "", [], 10, 0.0, 3, 0.0, 10, api_name="/chat")
    assert re.search(r"\[\d\]", answer["answer"]), answer
    assert answer["sources"][0]["cited"] and len(cited) >= 1
    assert any(isinstance(part, dict) and part.get("type") in ("file", "component") for m in history for part in m["content"])


def test_ask_about_a_picked_photo(indexed, client, ui_server):
    _, results, *_ = client.predict("a red circle", None, *NO_FILTERS, 2, api_name="/search")
    target = results[0]["photo"]
    picked, note = client.predict(target, api_name="/pick_for_chat")  # (the tab switch is not an API value)
    assert picked == target and Path(target).name in note
    _, _, answer, _, status = client.predict("What color is the background?", None, picked, [], 10, 0.0, 3, 0.0, 10, api_name="/chat")
    assert [s["photo"] for s in answer["sources"]] == [target]  # no retrieval: the picked photo only
    assert status == "Answered about one photo."


def test_settings_stats(indexed, client, ui_server):
    stats = client.predict(api_name="/stats")
    assert stats["photos"] == UI_ALBUM_N and stats["skipped"] == 1
    assert stats["roots"] == [str(ui_server.photos)]
    assert stats["model"] == ui_server.model and stats["fingerprint"].startswith("cafe-")
