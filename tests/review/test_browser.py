"""A real browser (Debian's chromium + chromedriver, driven by selenium) reviews cards with the
keyboard; the store must then hold exactly those verdicts.

Set FINEGRAIN_REVIEW_SCREENSHOT=path to also save the review page's screenshot there (the README's
finegrain_tf/review/docs/review_page.png is made this way).
"""

import math
import os
import shutil
import tempfile

import pytest
from PIL import Image, ImageDraw

from finegrain_tf.review.app import create_app

from .conftest import ThreadedServer

pytestmark = pytest.mark.slow

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1280,860")


def flower(path, petals: int, hue: tuple, seed: int, size: int = 160) -> str:
    """A small drawn flower: petal count and colour are its class cues, pose and background vary."""
    rng = __import__("random").Random(seed)
    image = Image.new("RGB", (size, size), (rng.randint(150, 200), rng.randint(170, 210), 140))
    draw = ImageDraw.Draw(image)
    cx, cy = size / 2 + rng.uniform(-12, 12), size / 2 + rng.uniform(-12, 12)
    radius, turn = size * rng.uniform(0.26, 0.34), rng.uniform(0, math.pi)
    for p in range(petals):
        angle = turn + 2 * math.pi * p / petals
        px, py = cx + radius * 0.6 * math.cos(angle), cy + radius * 0.6 * math.sin(angle)
        r = radius * 0.42
        draw.ellipse((px - r, py - r, px + r, py + r), fill=hue, outline=(90, 40, 40))
    draw.ellipse((cx - radius * 0.28, cy - radius * 0.28, cx + radius * 0.28, cy + radius * 0.28),
                 fill=(240, 200, 40))
    image.save(path)
    return str(path)


def chromium_driver(profile_dir):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:  # no skip: a browser test that does not run proves nothing
        raise RuntimeError("chromium / chromedriver not found: run `make system-deps`")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile_dir}")
    return webdriver.Chrome(service=Service(executable_path=driver_path), options=options)


@pytest.fixture
def browser():
    profile = tempfile.mkdtemp(prefix="finegrain-chromium-")
    driver = chromium_driver(profile)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_keyboard_review_in_chromium(sqlite_store, tmp_path, browser):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    store = sqlite_store
    token = store.add_labeler("alice")
    classes = {"rosa canina": (5, (230, 120, 150), "Dog rose: five pale pink petals, a yellow "
                                                    "centre, arching thorny stems."),
               "rosa gallica": (8, (170, 30, 60), "French rose: many deep crimson petals.")}
    for c, (name, (petals, hue, text)) in enumerate(classes.items()):
        exemplars = [flower(tmp_path / f"ex{c}{j}.png", petals, hue, seed=10 * c + j) for j in range(4)]
        store.set_class(name, text, exemplars)
    names = list(classes)
    store.enqueue([{"item_id": f"cand-{i:02d}", "round": 1, "score": 0.9 - i / 50,
                    "proposed_class": names[i % 2],
                    "image_path": flower(tmp_path / f"cand-{i:02d}.png", 5 + 3 * (i % 3 == 0),
                                         (220, 110, 140) if i % 2 else (180, 40, 70), seed=100 + i)}
                   for i in range(8)])
    # Card order: by class, then score: cand-00, 02, 04, 06 (canina) then 01, 03, ... (gallica).

    with ThreadedServer(create_app(store)) as server:
        browser.get(f"{server.url}/login?token={token}")
        # The page reloads after each key: an element can vanish while it is being read.
        wait = WebDriverWait(browser, 30, ignored_exceptions=(NoSuchElementException,
                                                              StaleElementReferenceException))

        def card():
            return browser.find_element(By.ID, "card").get_attribute("data-item-id")

        def press(key, expected_next):
            browser.find_element(By.TAG_NAME, "body").send_keys(key)
            wait.until(lambda d: card() == expected_next)

        assert browser.current_url == f"{server.url}/review" and card() == "cand-00"
        assert browser.find_element(By.CSS_SELECTOR, ".definition").text.startswith("Dog rose")
        assert len(browser.find_elements(By.CSS_SELECTOR, ".exemplars img")) == 4
        # Every image on the card loaded (served by item id, through the cookie session).
        assert browser.execute_script(
            "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        press("y", "cand-02")
        press("n", "cand-04")
        press("u", "cand-02")  # undo the "no": the card comes back
        press("y", "cand-04")
        press("s", "cand-06")
        press("n", "cand-01")
        assert "done 4 · remaining 4" in browser.find_element(By.ID, "progress-me").text
        screenshot = os.environ.get("FINEGRAIN_REVIEW_SCREENSHOT")
        if screenshot:
            browser.save_screenshot(screenshot)
        assert browser.get_screenshot_as_png()[:8] == b"\x89PNG\r\n\x1a\n"
        # Laptop: candidate and reference side by side; tablet portrait: one column with the
        # buttons right under the candidate.
        box = lambda css: browser.find_element(By.CSS_SELECTOR, css).rect
        assert box(".reference")["x"] > box(".candidate")["x"] + box(".candidate")["width"] - 1
        browser.set_window_size(768, 1024)
        wait.until(lambda d: box(".reference")["x"] == box(".candidate")["x"])
        assert box(".actions")["y"] >= box(".candidate")["y"] + box(".candidate")["height"] - 1
        assert box(".reference")["y"] >= box(".actions")["y"] + box(".actions")["height"] - 1
        assert box("#btn-undo")["x"] + box("#btn-undo")["width"] <= 768
        # A hostile class name and file name are shown as text and run nothing.
        evil = "<script>window.pwned = 1</script>"
        store.set_class(evil, "<img src=x onerror='window.pwned = 2'>", [])
        store.enqueue([{"item_id": "<b>evil</b>", "round": 0, "score": 1.0, "proposed_class": evil,
                        "image_path": flower(tmp_path / "<i>.png", 3, (0, 0, 0), seed=1)}])
        browser.get(f"{server.url}/review")
        wait.until(lambda d: card() == "<b>evil</b>")
        assert browser.find_element(By.CSS_SELECTOR, ".class-name").text == evil
        assert "<i>.png" in browser.find_element(By.CSS_SELECTOR, ".candidate .meta").text
        assert browser.execute_script("return window.pwned === undefined")

    standing = {(j["item_id"], j["verdict"], j["labeler"]) for j in store.judgements()}
    assert standing == {("cand-00", "yes", "alice"), ("cand-02", "yes", "alice"),
                        ("cand-04", "skip", "alice"), ("cand-06", "no", "alice")}
    assert [(a["action"], a["item_id"], a["verdict"]) for a in store.audit()] == [
        ("verdict", "cand-00", "yes"), ("verdict", "cand-02", "no"), ("undo", "cand-02", "no"),
        ("verdict", "cand-02", "yes"), ("verdict", "cand-04", "skip"), ("verdict", "cand-06", "no")]
    assert store.decisions() == {"cand-00": "yes", "cand-02": "yes", "cand-06": "no"}
