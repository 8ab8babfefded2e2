"""End to end in real headless Chromium (Debian chromium + chromedriver, driven by Selenium) against a
`python -m app serve` subprocess on loopback: an empty library says how to start; index from the
Library tab (Enter in the folder box); the Photos view lists the library newest first; a second folder
shows everywhere after a reload; search, a never-seen word, find-similar on the photo clicked, photo +
text; and the Chat tab's trust flow (a refusal with closest matches, an answer, a follow-up). Saves
screenshots of each to docs/screenshots/ (with the shipped model)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.app.ui_server import BROKEN_NAME, UI_ALBUM_N, shipped_model, write_ui_album

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"
SECOND_N = 6

pytestmark = [
    pytest.mark.timeout(400),
    pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                       reason="needs Debian chromium + chromium-driver (.ci/run installs them)"),
]

# Records every text state of the last answer bubble, so the test can see the answer grow (streaming).
OBSERVE_ANSWER_JS = """
window.__answerStates = [];
const log = document.querySelector('#chat-history');
const record = () => {
  const bots = log.querySelectorAll('[data-testid="bot"]');
  const text = bots.length ? bots[bots.length - 1].innerText : '';
  const states = window.__answerStates;
  if (text && states[states.length - 1] !== text) states.push(text);
};
new MutationObserver(record).observe(log, {subtree: true, childList: true, characterData: true});
"""


@pytest.fixture(scope="module")
def shots_dir(tmp_path_factory) -> Path:
    """docs/screenshots with the shipped model (the pictures the README shows), else a temp folder."""
    if shipped_model():
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        return SCREENSHOTS
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager look for drivers online
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                "--window-size=1280,1000", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory, request):
    """A `serve` subprocess of its own (this module adds a second folder), empty database at first."""
    from tests.app.ui_server import UIServer, start_server, stop_server

    work = tmp_path_factory.mktemp("browser-ui")
    gt = write_ui_album(work / "album")
    model = str(REPO_ROOT / "models" / "cafe-tiny-sampleworld") if shipped_model() else \
        str(request.getfixturevalue("tiny_model_dir"))
    proc, url, port, log = start_server(model, work / "db", work)
    yield UIServer(url, port, proc, work / "album", work / "album" / "photos", gt, work / "outbound.log", model, log)
    stop_server(proc)


@pytest.fixture(scope="module")
def page(browser, ui_server):
    load(browser, ui_server.url)
    return browser


def load(driver, url: str) -> None:
    driver.get(url)
    wait_for(driver, lambda d: d.find_elements("css selector", "button[role=tab]"), 60, "the page")


def wait_for(driver, condition, timeout: float = 60, what: str = "condition"):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition, message=f"waiting for {what}")


def open_tab(driver, name: str) -> None:
    tab = next(t for t in driver.find_elements("css selector", "button[role=tab]") if t.text.strip() == name)
    tab.click()
    wait_for(driver, lambda d: tab.get_attribute("aria-selected") == "true", 10, f"the {name} tab")


def field(driver, elem_id: str):
    return driver.find_element("css selector", f"#{elem_id} textarea, #{elem_id} input")


def text_of(driver, elem_id: str) -> str:
    return driver.find_element("id", elem_id).text


def settled_text(driver, elem_id: str) -> str:
    """The element's text once Gradio's progress overlay ("processing | 0.5/0.2s") has left it, else ""."""
    t = text_of(driver, elem_id)
    busy = "processing" in t or driver.find_elements("css selector", f"#{elem_id} .progress-text")
    return "" if busy else t


def gallery_captions(driver, elem_id: str) -> list[str]:
    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(20):  # the gallery re-renders while results arrive
        try:
            return [e.text for e in driver.find_elements("css selector", f"#{elem_id} .caption-label")]
        except StaleElementReferenceException:
            time.sleep(0.2)
    raise AssertionError(f"#{elem_id} kept changing")


def open_filters(driver) -> None:
    """Open the Photos view's Filters accordion (closed at first) unless it is open."""
    if not driver.find_elements("css selector", "#search-after textarea, #search-after input"):
        driver.find_element("css selector", "#search-filters .label-wrap").click()
    wait_for(driver, lambda d: d.find_elements("css selector", "#search-after textarea, #search-after input"), 10,
             "the filters")


def close_preview(driver) -> None:
    """Leave the gallery's full-size preview (clicking a photo opens it) to show the grid again."""
    for button in driver.find_elements("css selector", "#search-gallery button[aria-label='Close']"):
        if button.is_displayed():
            button.click()


def search_for(driver, text: str) -> list[str]:
    from selenium.common.exceptions import TimeoutException

    box = field(driver, "search-text")
    box.clear()
    box.send_keys(text)
    before = text_of(driver, "search-status")
    driver.find_element("id", "search-button").click()
    try:
        wait_for(driver, lambda d: settled_text(d, "search-status") not in ("", before), 20, f"results for {text!r}")
    except TimeoutException:  # the same query again: the same status
        assert text_of(driver, "search-status") == before
    time.sleep(0.5)
    return gallery_captions(driver, "search-gallery")


def names(captions: list[str]) -> list[str]:
    return [c.split(" · ")[-1] for c in captions]


def test_an_empty_library_says_how_to_start(page):
    status = wait_for(page, lambda d: settled_text(d, "search-status"), 30, "the Photos view's status")
    assert "Your library is empty" in status and "index a photo folder" in status, status
    assert page.find_element("css selector", "button[role=tab][aria-selected=true]").text.strip() == "Photos"


def test_library_indexes_a_folder_on_enter(page, ui_server, shots_dir):
    from selenium.webdriver.common.keys import Keys

    open_tab(page, "Library")
    box = field(page, "library-folder")
    box.clear()
    box.send_keys(str(ui_server.photos) + Keys.ENTER)
    wait_for(page, lambda d: f"{UI_ALBUM_N} photos indexed" in text_of(d, "library-counts")
             and "indexed " in text_of(d, "library-status"), 180, "indexing to finish")
    assert "skipped 1" in text_of(page, "library-status")
    skips = text_of(page, "library-skips")
    assert BROKEN_NAME in skips and "not-an-image" in skips
    page.save_screenshot(str(shots_dir / "library.png"))


def test_the_landing_view_shows_the_library_newest_first(page, ui_server, shots_dir):
    load(page, ui_server.url)
    status = wait_for(page, lambda d: (t := settled_text(d, "search-status")) and "newest first" in t and t, 60, "photos")
    assert status.startswith(f"{UI_ALBUM_N} photos"), status
    shown = names(wait_for(page, lambda d: gallery_captions(d, "search-gallery"), 30, "the gallery"))
    dates = [ui_server.photo_spec(n)["date"] for n in shown]
    assert len(shown) == UI_ALBUM_N and dates == sorted(dates, reverse=True)
    page.save_screenshot(str(shots_dir / "photos.png"))


def test_a_second_folder_shows_everywhere_after_a_reload(page, ui_server, tmp_path_factory):
    second = tmp_path_factory.mktemp("second")
    gt = write_ui_album(second, n=SECOND_N, seed=201)
    ui_server.ground_truth["photos"] += gt["photos"]  # photo_spec() knows both folders' photos
    open_tab(page, "Library")
    box = field(page, "library-folder")
    box.clear()
    box.send_keys(str(second / "photos"))
    page.find_element("id", "index-button").click()
    total = UI_ALBUM_N + SECOND_N
    wait_for(page, lambda d: f"{total} photos indexed" in text_of(d, "library-counts"), 120, "the second folder")
    load(page, ui_server.url)
    wait_for(page, lambda d: f"{total} photos, newest first" in text_of(d, "search-status"), 60, "both folders")
    open_tab(page, "Library")
    counts = wait_for(page, lambda d: (t := text_of(d, "library-counts")) and f"{total} photos" in t and t, 30, "counts")
    assert str(ui_server.photos) in counts and str(second / "photos") in counts
    open_tab(page, "Settings")
    stats = wait_for(page, lambda d: (t := text_of(d, "settings-stats")) and str(total) in t and t, 30, "statistics")
    assert str(second / "photos") in stats, stats
    open_tab(page, "Photos")
    open_filters(page)
    from selenium.common.exceptions import TimeoutException

    page.find_element("css selector", "#search-folder input").click()
    # Each option's aria-label, not .text (which is "" for an option still sliding into view), and the
    # wait ends only once every folder is listed (the failure shows what the list held).
    seen: list[list[str]] = [[]]

    def listed(d):
        seen[0] = [o.get_attribute("aria-label")
                   for o in d.find_elements("css selector", "ul[role=listbox] li[role=option]")]
        return {str(ui_server.photos), str(second / "photos")} <= set(seen[0])

    try:
        wait_for(page, listed, 10, "the folder filter's choices")
    except TimeoutException:
        pytest.fail(f"the folder filter lists {seen[0]}, not both folders")
    page.find_element("css selector", "body").click()


def test_search_and_a_word_the_model_never_saw(page, ui_server, shots_dir):
    open_tab(page, "Photos")
    shown = names(search_for(page, "a red circle"))
    assert shown
    if shipped_model():
        assert any(o["color"] == "red" and o["shape"] == "circle" for o in ui_server.photo_spec(shown[0])["objects"])
    imgs = page.find_elements("css selector", "#search-gallery img")
    assert all(urlparse(i.get_attribute("src")).hostname == "127.0.0.1" for i in imgs)
    page.save_screenshot(str(shots_dir / "search.png"))
    search_for(page, "a cat")
    status = text_of(page, "search-status")
    if shipped_model():
        assert "never seen 'cat'" in status, status
        page.save_screenshot(str(shots_dir / "unknown-word.png"))


def test_a_bad_date_says_so_once_and_keeps_the_results(page):
    open_tab(page, "Photos")
    shown = search_for(page, "a red circle")
    open_filters(page)
    after = field(page, "search-after")
    after.send_keys("yesterday")
    page.find_element("id", "search-button").click()
    status = wait_for(page, lambda d: (t := text_of(d, "search-status")).startswith("⚠️") and t, 30, "the error")
    assert "YYYY-MM-DD" in status
    assert gallery_captions(page, "search-gallery") == shown  # the previous results stay
    toasts = [t for t in page.find_elements("css selector", ".toast-body") if t.is_displayed()]
    assert not toasts and "Error" not in text_of(page, "search-gallery")
    after.clear()
    after.send_keys(" ")
    after.clear()


def test_find_similar_uses_the_photo_clicked(page, ui_server):
    open_tab(page, "Photos")
    shown = names(search_for(page, "a blue square"))
    assert len(shown) >= 2
    page.find_elements("css selector", "#search-gallery button.thumbnail-item")[1].click()
    selected = wait_for(page, lambda d: field(d, "search-selected").get_attribute("value"), 30, "a selected photo")
    assert Path(selected).name == shown[1]
    page.find_element("id", "similar-button").click()
    wait_for(page, lambda d: names(gallery_captions(d, "search-gallery"))[:1] == [shown[1]], 60,
             "the clicked photo itself as the most similar")
    assert "like" in text_of(page, "search-selected-info")
    page.find_element("id", "ask-photo-button").click()
    wait_for(page, lambda d: field(d, "chat-picked").get_attribute("value") == selected, 30, "the picked photo in Chat")
    page.find_element("xpath", "//button[normalize-space()='Clear picked photo']").click()
    wait_for(page, lambda d: field(d, "chat-picked").get_attribute("value") == "", 10, "the pick to clear")
    open_tab(page, "Photos")


def test_photo_plus_text_puts_white_backgrounds_first(page, ui_server, shots_dir):
    if not shipped_model():
        pytest.skip("needs the shipped model")
    photo = next(p for p in sorted(ui_server.photos.glob("test-*.jpg"))
                 if ui_server.photo_spec(p.name)["background"] == "black")
    open_tab(page, "Photos")
    page.find_element("css selector", "#search-image input[type=file]").send_keys(str(photo))
    wait_for(page, lambda d: "your photo" in text_of(d, "search-status"), 60, "results for the photo")
    shown = names(search_for(page, "on a white background"))
    white = [ui_server.photo_spec(n)["background"] == "white" for n in shown[:5]]
    assert sum(white) >= 4, (shown[:5], white)
    close_preview(page)
    page.save_screenshot(str(shots_dir / "photo-plus-text.png"))
    page.find_element("id", "search-clear").click()
    wait_for(page, lambda d: "newest first" in text_of(d, "search-status"), 30, "the library again")


def ask(page, question: str) -> str:
    """Send a chat message and return the status line once its answer is complete. Two answers in a row can
    have the same status, so completion is: one more user message in the history, and a final status (while
    the request runs, Gradio's progress overlay is in the status box: see settled_text)."""
    users = lambda d: len(d.find_elements("css selector", '#chat-history [data-testid="user"]'))  # noqa: E731
    before = users(page)
    box = field(page, "chat-message")
    box.send_keys(question)
    page.find_element("id", "chat-send").click()
    wait_for(page, lambda d: users(d) > before, 60, f"{question!r} in the history")
    return wait_for(page, lambda d: (t := settled_text(d, "chat-status")) not in ("", "Answering…") and t,
                    120, f"the answer to {question!r}")


def test_chat_refuses_what_is_not_there_answers_and_follows_up(page, ui_server, shots_dir):
    open_tab(page, "Chat")
    status = ask(page, "What color is the background in the photo with the purple star?")
    assert status.startswith("Refused"), status
    bots = page.find_elements("css selector", '#chat-history [data-testid="bot"]')
    assert "I found no photo with the purple star" in bots[0].text
    if shipped_model():
        bots_of = lambda d: d.find_elements("css selector", '#chat-history [data-testid="bot"]')  # noqa: E731
        bot_text = lambda d: " ".join(b.text for b in bots_of(d))  # noqa: E731
        wait_for(page, lambda d: "Closest matches" in bot_text(d), 30, f"closest matches in {bot_text(page)!r}")
        assert "Closest matches" in page.find_element("id", "chat-cited").text  # not labelled as citations
        page.save_screenshot(str(shots_dir / "chat-refusal.png"))
    q = next(q for q in ui_server.ground_truth["album_questions"] if q["qtype"] == "album_background")
    page.execute_script(OBSERVE_ANSWER_JS)
    status = ask(page, q["question"])
    if shipped_model():
        assert status.startswith("Answered from"), status
        assert len(page.execute_script("return window.__answerStates")) >= 2  # streamed
        status = ask(page, "When was it taken?")
        assert status.startswith("Answered from"), status
        last = page.find_elements("css selector", '#chat-history [data-testid="bot"]')
        text = " ".join(b.text for b in last)
        assert " — in [1] " in text
        page.save_screenshot(str(shots_dir / "chat.png"))
    assert not [b for b in page.find_elements("css selector", "button[aria-label=Share]") if b.is_displayed()]


def test_browser_only_talked_to_the_local_server(page):
    hosts = set()
    for entry in page.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            url = msg["params"]["request"]["url"]
            if url.startswith(("http:", "https:", "ws:", "wss:")):
                hosts.add(urlparse(url).hostname)
    assert hosts == {"127.0.0.1"}, hosts
