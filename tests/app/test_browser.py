"""End to end in real headless Chromium (Debian chromium + chromedriver, driven by Selenium) against a
`python -m app serve` subprocess on loopback: index from the Library tab, search, pick a photo, ask in
Chat, and save screenshots of the three tabs to docs/screenshots/ (with the shipped model)."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.app.ui_server import BROKEN_NAME, UI_ALBUM_N, shipped_model

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"

pytestmark = [
    pytest.mark.timeout(300),
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
def page(browser, ui_server):
    browser.get(ui_server.url)
    wait_for(browser, lambda d: d.find_elements("css selector", "button[role=tab]"), 60)
    return browser


def wait_for(driver, condition, timeout: float = 60, what: str = "condition"):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition, message=f"waiting for {what}")


def open_tab(driver, name: str) -> None:
    tab = next(t for t in driver.find_elements("css selector", "button[role=tab]") if t.text.strip() == name)
    tab.click()
    wait_for(driver, lambda d: tab.get_attribute("aria-selected") == "true", 10, f"the {name} tab")


def field(driver, elem_id: str):
    return driver.find_element("css selector", f"#{elem_id} textarea, #{elem_id} input")


def gallery_captions(driver, elem_id: str) -> list[str]:
    return [e.text for e in driver.find_elements("css selector", f"#{elem_id} .caption-label")]


def test_library_indexes_a_folder(page, ui_server, shots_dir):
    open_tab(page, "Library")
    box = field(page, "library-folder")
    box.clear()
    box.send_keys(str(ui_server.photos))
    page.find_element("id", "index-button").click()
    counts = wait_for(page, lambda d: f"{UI_ALBUM_N} photos indexed" in d.find_element("id", "library-counts").text
                      and "indexed " in d.find_element("id", "library-status").text, 180, "indexing to finish")
    assert counts
    status = page.find_element("id", "library-status").text
    assert "skipped 1" in status, status
    skips = page.find_element("id", "library-skips").text
    assert BROKEN_NAME in skips and "not-an-image" in skips
    page.save_screenshot(str(shots_dir / "library.png"))


def test_search_shows_a_red_circle_first(page, ui_server, shots_dir):
    open_tab(page, "Search")
    box = field(page, "search-text")
    box.clear()
    box.send_keys("a red circle")
    page.find_element("id", "search-button").click()
    captions = wait_for(page, lambda d: gallery_captions(d, "search-gallery"), 60, "search results")
    imgs = page.find_elements("css selector", "#search-gallery img")
    assert len(imgs) >= len(captions) >= 5
    # Every gallery image is served by this server (thumbnails in its temp folder).
    assert all(urlparse(i.get_attribute("src")).hostname == "127.0.0.1" for i in imgs)
    scores = [float(c.split(" · ")[0]) for c in captions]
    assert scores == sorted(scores, reverse=True)
    page.save_screenshot(str(shots_dir / "search.png"))
    top = ui_server.photo_spec(captions[0].split(" · ")[1])
    if shipped_model():
        assert any(o["color"] == "red" and o["shape"] == "circle" for o in top["objects"]), (captions[0], top)


def test_pick_a_photo_find_similar_and_ask_about_it(page, ui_server):
    open_tab(page, "Search")
    page.find_elements("css selector", "#search-gallery button.thumbnail-item")[1].click()
    selected = wait_for(page, lambda d: field(d, "search-selected").get_attribute("value"), 30, "a selected photo")
    assert Path(selected).parent == ui_server.photos
    page.find_element("id", "similar-button").click()
    wait_for(page, lambda d: (c := gallery_captions(d, "search-gallery")) and Path(selected).name in c[0]
             and c[0].startswith("1.000"), 60, "the photo itself as the most similar")
    page.find_element("id", "ask-photo-button").click()
    wait_for(page, lambda d: field(d, "chat-picked").get_attribute("value") == selected, 30, "the picked photo in Chat")
    chat_tab = next(t for t in page.find_elements("css selector", "button[role=tab]") if t.text.strip() == "Chat")
    assert chat_tab.get_attribute("aria-selected") == "true"
    page.find_element("xpath", "//button[normalize-space()='Clear picked photo']").click()
    wait_for(page, lambda d: field(d, "chat-picked").get_attribute("value") == "", 10, "the pick to clear")


def test_chat_streams_a_grounded_answer_with_a_cited_photo(page, ui_server, shots_dir):
    open_tab(page, "Chat")
    question = ui_server.ground_truth["album_questions"][0]["question"]
    page.execute_script(OBSERVE_ANSWER_JS)
    box = field(page, "chat-message")
    box.send_keys(question)
    page.find_element("id", "chat-send").click()
    status = wait_for(page, lambda d: (t := d.find_element("id", "chat-status").text).startswith(("Answered", "No "))
                      and t, 120, "the answer")
    assert status.startswith("Answered from"), status
    # The last state of the answer bubble is the final answer; earlier states show it growing.
    wait_for(page, lambda d: d.find_elements("css selector", "#chat-cited img") or not shipped_model(), 60,
             "cited photos")
    states = page.execute_script("return window.__answerStates")
    user = page.find_elements("css selector", '#chat-history [data-testid="user"]')
    assert question in user[-1].text
    if shipped_model():
        final = page.find_elements("css selector", '#chat-history [data-testid="bot"]')
        answer_text = " ".join(b.text for b in final)
        assert re.search(r"\[\d\]", answer_text), answer_text
        assert len(states) >= 2, states  # streamed: the bubble changed more than once
        assert page.find_elements("css selector", "#chat-history img")  # the cited photo, inside the chat
        assert page.find_elements("css selector", "#chat-cited img")  # and in the cited gallery
    # No share-to-Hugging-Face buttons anywhere.
    assert not [b for b in page.find_elements("css selector", "button[aria-label=Share]") if b.is_displayed()]
    page.save_screenshot(str(shots_dir / "chat.png"))


def test_browser_only_talked_to_the_local_server(page):
    hosts = set()
    for entry in page.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            url = msg["params"]["request"]["url"]
            if url.startswith(("http:", "https:", "ws:", "wss:")):
                hosts.add(urlparse(url).hostname)
    assert hosts == {"127.0.0.1"}, hosts
