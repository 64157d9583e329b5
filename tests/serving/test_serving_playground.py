"""The marker playground page in a real browser (Debian's headless Chromium through chromedriver)
against two real Serve applications on the shared local Ray: a marked model and a baseline.

Both are tests/marker_lessons.py's models (the marked one the session's `lessons_checkpoint`): the marked one
learns to write a marker block whose answer follows length_bucket, so the page has real inferred
markers to show. The page must render exactly what the API returns for the request its own curl
snippet shows (greedy decoding, same seed), requested and inferred markers included.

TREASURE_SCREENSHOT=docs/playground.png writes the README's screenshot from this run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import httpx
import pytest
from marker_lessons import PROMPT, train_lessons

TEST_TOKEN, TEST_TOKEN_ENV = "test-token-not-a-secret", "TREASURE_SERVE_TEST_TOKEN"  # tests/conftest.py's
AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}


@pytest.fixture(scope="module")
def apps(serve_app, tmp_path_factory, taxonomy, lessons_checkpoint):
    """(marked app URL, baseline app URL): two applications behind one Serve proxy, auth on."""
    marked = lessons_checkpoint  # trained once per session (tests/conftest.py)
    baseline = train_lessons(tmp_path_factory.mktemp("baseline"), taxonomy, markers=False, steps=60)
    common = dict(engine="transformers", auth_token_env=TEST_TOKEN_ENV, num_cpus=0.25)
    return (serve_app(checkpoint=str(marked), model_name="marked", **common),
            serve_app(checkpoint=str(baseline), model_name="baseline", **common))


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Debian's Chromium, headless, through chromedriver; flags that keep it off the (closed) network."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail("the playground test needs Debian's chromium and chromium-driver: `make setup` as root installs them "
                    "(scripts/setup.sh), or `apt-get install chromium chromium-driver`")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    web = webdriver.Chrome(service=Service(driver), options=options)
    web.set_page_load_timeout(60)
    yield web
    web.quit()


def _wait(what, timeout=90.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"waited {timeout} s for {what.__doc__ or what}")


def _cards(web) -> list[dict]:
    """What the page shows per answer card, read back from the DOM."""
    return web.execute_script("""
        const dl = (box) => Object.fromEntries([...box.querySelectorAll('dd[data-category]')]
            .map((dd) => [dd.dataset.category, dd.textContent]));
        return [...document.querySelectorAll('article.card')].map((c) => ({
            state: c.dataset.state, title: c.querySelector('h3').textContent,
            text: c.querySelector('.answer').textContent, error: c.querySelector('.error').textContent,
            requested: dl(c.querySelector('dl.requested')), inferred: dl(c.querySelector('dl.inferred')),
            inferredText: c.querySelector('dl.inferred').textContent, stats: c.querySelector('.stats').textContent,
            curl: c.querySelector('code.curl').textContent, python: c.querySelector('code.python').textContent}));
    """)


def _run(web, expect: int) -> list[dict]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    web.find_element(By.ID, "prompt").send_keys(Keys.CONTROL, Keys.ENTER)  # the keyboard path to Run

    def finished():
        """every answer card to finish streaming"""
        cards = _cards(web)
        return cards if len(cards) == expect and all(c["state"] != "streaming" for c in cards) else None

    return _wait(finished)


def _curl_body(card) -> dict:
    """The JSON body of the card's curl snippet (the exact request the page sent)."""
    return json.loads(re.search(r"-d '(.*)'$", card["curl"], re.S).group(1))


def _select(web, element_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(web.find_element(By.ID, element_id)).select_by_value(value)


def test_page_assets_are_static_and_fenced(apps):
    marked, _ = apps
    root = httpx.get(f"{marked}/", timeout=30)  # no auth: the page holds no secret
    assert root.status_code == 307 and root.headers["location"].endswith(f"{marked.rsplit('/', 1)[1]}/playground/")
    page = httpx.get(f"{marked}/playground/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text)  # no external assets
    assert httpx.get(f"{marked}/playground/playground.js", timeout=30).headers["content-type"].startswith("text/javascript")
    assert httpx.get(f"{marked}/playground/secrets.txt", timeout=30).status_code == 404
    assert "/playground/" not in json.dumps(httpx.get(f"{marked}/v1/taxonomy", headers=AUTH, timeout=30).json())


def test_playground_compares_settings_and_models_in_a_browser(apps, browser):
    from selenium.webdriver.common.by import By

    marked, baseline = apps
    web = browser
    web.get(f"{marked}/")
    assert web.current_url.endswith("/playground/")
    # Auth on and no token yet: the API's own 401 message.
    served = _wait(lambda: "HTTP 401" in web.find_element(By.ID, "served").text and web.find_element(By.ID, "served").text)
    assert "missing Authorization header" in served

    web.find_element(By.ID, "token").send_keys(TEST_TOKEN)
    web.find_element(By.ID, "endpoints").send_keys("/" + baseline.rsplit("/", 1)[1])
    web.find_element(By.ID, "connect").click()
    served = _wait(lambda: "Models:" in web.find_element(By.ID, "served").text and web.find_element(By.ID, "served").text)
    assert "marked at /" in served and "baseline at /" in served and "not trained with markers" in served

    # One control per category of the served block, filled from /v1/taxonomy, inferring by default.
    taxonomy = httpx.get(f"{marked}/v1/taxonomy", headers=AUTH, timeout=30).json()
    controls = web.execute_script(
        "return [...document.querySelectorAll('fieldset.setting [data-category]')].map((c) => "
        "[c.dataset.category, c.value, c.tagName === 'SELECT' ? [...c.options].map((o) => o.value) : null])")
    assert [c[0] for c in controls] == [c["name"] for c in taxonomy["categories"]]
    assert all(value == "" for _, value, _ in controls)
    for (name, _, options), category in zip(controls, taxonomy["categories"]):
        if isinstance(category["allowed"], list):
            assert options == ["", *category["allowed"]], name
    assert "length_tokens < 300" in web.find_element(By.ID, "desc-length_bucket").get_attribute("textContent")
    unlabelled = web.execute_script(
        "return [...document.querySelectorAll('input, select, textarea')].filter((c) => "
        "!document.querySelector(`label[for=\"${c.id}\"]`)).map((c) => c.outerHTML)")
    assert unlabelled == []

    # Compare: concise vs medium on the marked model, and the baseline model beside them.
    prompt = web.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys(PROMPT)
    web.find_element(By.ID, "max-tokens").clear()
    web.find_element(By.ID, "max-tokens").send_keys("160")
    _select(web, "s1-length_bucket", "concise")
    web.find_element(By.ID, "add-setting").click()
    _select(web, "s2-length_bucket", "medium")
    web.find_element(By.ID, "add-setting").click()
    _select(web, "s3-model", "1")
    cards = _run(web, expect=3)
    assert [c["state"] for c in cards] == ["done"] * 3, cards
    concise, medium, base = cards
    assert concise["requested"] == {"length_bucket": "concise"} and medium["requested"] == {"length_bucket": "medium"}
    for card in cards:  # the page shows exactly what the API answers to the request its snippet shows
        body = _curl_body(card)
        assert body["stream"] is True and body["messages"] == [{"role": "user", "content": PROMPT}]
        url = marked if card is not base else baseline
        api = httpx.post(f"{url}/v1/chat/completions", json={**body, "stream": False}, headers=AUTH, timeout=60).json()
        assert card["text"] == api["choices"][0]["message"]["content"] and card["text"].strip()
        assert card["inferred"] == api["markers"]["inferred"] and card["requested"] == api["markers"]["requested"]
        assert f"{api['usage']['prompt_tokens']} prompt + " in card["stats"] and "finish: stop" in card["stats"]
    # The marked model wrote its block: the open categories came back inferred, and length steered the answer.
    for card in (concise, medium):
        assert set(card["inferred"]) == {"task", "domain", "language"}, card
    assert len(concise["text"]) < len(medium["text"])
    assert "baseline" in base["title"] and base["inferred"] == {} and "wrote no block" in base["inferredText"]

    # The Python snippet is the same request through the openai client, and runs.
    out = subprocess.run([sys.executable, "-c", concise["python"]], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TREASURE_TOKEN": TEST_TOKEN})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(concise["text"]) and "'domain'" in out.stdout

    if os.environ.get("TREASURE_SCREENSHOT"):
        web.execute_script("document.getElementById('h-answers').scrollIntoView()")
        web.save_screenshot(os.environ["TREASURE_SCREENSHOT"])

    # Errors come back as the API's message: a value outside the taxonomy (422), then a wrong token (401).
    web.find_element(By.ID, "s1-length_tokens").send_keys("-3")
    cards = _run(web, expect=3)
    api = httpx.post(f"{marked}/v1/chat/completions", json=_curl_body(cards[0]), headers=AUTH, timeout=60)
    assert cards[0]["state"] == "error" and cards[0]["error"] == f"HTTP 422: {api.json()['error']['message']}"
    assert api.status_code == 422 and "length_tokens" in cards[0]["error"] and cards[1]["state"] == "done"
    web.find_element(By.ID, "token").clear()
    web.find_element(By.ID, "token").send_keys("not-the-token")
    cards = _run(web, expect=3)
    assert [c["error"] for c in cards] == ["HTTP 401: invalid bearer token"] * 3

    # Phone width: everything reflows into one column, nothing scrolls sideways.
    web.set_window_size(390, 844)
    time.sleep(0.3)
    overflow = web.execute_script("return [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert overflow[0] <= overflow[1], overflow
    web.set_window_size(1400, 1000)
