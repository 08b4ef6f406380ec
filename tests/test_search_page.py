"""The search page at `/`, driven in a real headless browser (Debian's chromium + chromium-driver, via selenium).

The screenshot goes to $SEARCHR3_SCREENSHOT (default: runs/test-artifacts/search_page.png in the checkout).
"""

import os
import shutil
from pathlib import Path

import pytest

from searchr3.index import Doc, build_index
from searchr3.search import Searcher
from searchr3.service import ServiceConfig, create_app
from tests.conftest import running_server

REPO = Path(__file__).resolve().parents[1]
TEXTS = [
    "the cat sat on the mat",
    "paris is the capital of france",
    "proteins fold into shapes",
    "rain falls from clouds in the sky",
    "the heart pumps blood through the body",
]
CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")

pytestmark = pytest.mark.skipif(not (CHROMEDRIVER and CHROMIUM), reason="needs chromium + chromium-driver (make system-deps)")


@pytest.fixture()
def site(tiny, tiny_model_dir, tmp_path):
    tiny.prompts.max_reasoning_tokens = 6
    build_index(
        tiny,
        [Doc(f"doc-{i}", t) for i, t in enumerate(TEXTS)],
        tmp_path / "idx",
        model_name=str(tiny_model_dir),
        show_progress_bar=False,
    )
    searcher = Searcher(tmp_path / "idx", tiny)
    app = create_app(searcher=searcher, config=ServiceConfig(max_wait_ms=1))
    with running_server(app) as url:
        yield url, searcher


@pytest.fixture()
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1000,800"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)  # Debian's driver: nothing is downloaded
    yield driver
    driver.quit()


def test_search_page_finds_the_top_hit(site, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    url, searcher = site
    query = "paris is the capital of france"
    want = searcher.search(query, k=3)  # what the Python API ranks first is what the page must show first
    browser.get(url + "/")
    wait = WebDriverWait(browser, 30)
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "5 documents indexed"))
    browser.find_element(By.ID, "k").clear()
    browser.find_element(By.ID, "k").send_keys("3")
    browser.find_element(By.ID, "q").send_keys(query)
    browser.find_element(By.ID, "go").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "3 hits"))
    hits = browser.find_elements(By.CSS_SELECTOR, "#hits li.hit")
    assert len(hits) == 3
    assert want[0].id in hits[0].text and want[0].text in hits[0].text and f"{want[0].score:.4f}" in hits[0].text
    assert [h.id for h in want] == [li.get_attribute("data-id") for li in hits]
    assert not browser.find_element(By.ID, "reasoning-box").is_displayed()

    for mode in ("on", "mix"):  # the model's text is shown above the hits, which are the Python API's for that mode
        Select(browser.find_element(By.ID, "reasoning")).select_by_value(mode)
        browser.find_element(By.ID, "go").click()
        wait.until(ec.visibility_of_element_located((By.ID, "reasoning-box")))
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "3 hits"))
        reasoned = searcher.search_many([query], k=3, reasoning=mode)[0]
        assert browser.find_element(By.ID, "reasoning-text").text == (
            reasoned.reasoning or "(the model wrote nothing before its embedding token)"
        )
        shown = [li.get_attribute("data-id") for li in browser.find_elements(By.CSS_SELECTOR, "#hits li.hit")]
        assert shown == [h.id for h in reasoned.hits], mode
    shot = Path(os.environ.get("SEARCHR3_SCREENSHOT", REPO / "runs" / "test-artifacts" / "search_page.png"))
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 5_000

    browser.find_element(By.ID, "q").clear()
    browser.find_element(By.ID, "q").send_keys(" ")
    browser.find_element(By.ID, "go").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "Type a query first"))
