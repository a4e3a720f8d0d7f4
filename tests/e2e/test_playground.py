"""The playground (web/, served at /) in headless Chromium against the real server.

The browser cannot resolve any host name and every https URL is blocked, and at the end every
request the page made is checked to have gone to the server's own origin: the page works offline.
Screenshots of both tabs go to $TESSERA_ARTIFACTS (default build/e2e-artifacts); with
TESSERA_UPDATE_DOCS=1 they also replace the README's copies in docs/.
"""
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

import pytest
import requests
from PIL import Image

from conftest import ROOT

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is missing: run scripts/setup")
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHAT = "databricks-dbrx-instruct"
IMAGE = "databricks-shutterstock-imageai"
CHROMIUM = os.environ.get("TESSERA_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("TESSERA_CHROMEDRIVER", "/usr/bin/chromedriver")
ARTIFACTS = pathlib.Path(os.environ.get("TESSERA_ARTIFACTS", ROOT / "build" / "e2e-artifacts"))
WIDE = (1440, 900)


@pytest.fixture(scope="module")
def browser(server):
    for path in (CHROMIUM, CHROMEDRIVER):
        if not pathlib.Path(path).exists():
            pytest.fail(f"{path} is missing: run scripts/setup (Debian packages chromium, chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--hide-scrollbars", "--force-device-scale-factor=1", f"--window-size={WIDE[0]},{WIDE[1]}",
                # No name resolves, so nothing but 127.0.0.1 can be reached.
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
                "--no-first-run", "--disable-background-networking", "--disable-sync",
                "--disable-component-update", "--disable-default-apps"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["https://*", "ws://*", "wss://*", "http://*:80/*"]})
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": WIDE[0], "height": WIDE[1], "deviceScaleFactor": 1, "mobile": False})
    driver.requests = []  # every URL the page asked for, from the performance log
    yield driver
    driver.quit()


def collect_requests(driver):
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            driver.requests.append(message["params"]["request"]["url"])
    return driver.requests


def wait(driver, condition, timeout=30, message=""):
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: condition(d), message)


def by_id(driver, element_id):
    return driver.find_element(By.ID, element_id)


def shot(driver, name, docs=True):
    """A test artifact and, when asked (TESSERA_UPDATE_DOCS=1), the README's copy in docs/."""
    collect_requests(driver)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(path))
    # A 256-colour palette keeps the README's images small (generated images are noisy).
    Image.open(path).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    assert path.stat().st_size < 500_000, f"{name} is {path.stat().st_size} bytes"
    if docs and os.environ.get("TESSERA_UPDATE_DOCS") == "1":
        shutil.copy(path, ROOT / "docs" / name)
    return path


@pytest.fixture(scope="module")
def signed_in(browser, server):
    browser.get(server.url + "/")
    wait(browser, lambda d: by_id(d, "sign-in").is_displayed(), message="the sign-in form did not show")
    by_id(browser, "token").send_keys(server.token, Keys.ENTER)
    wait(browser, lambda d: by_id(d, "tabs").is_displayed(), message="signing in did not open the tabs")
    return browser


def test_page_and_modules_need_no_token(server):
    page = requests.get(server.url + "/", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert '<script type="module" src="/web/app.js">' in page.text
    js = requests.get(server.url + "/web/chat.js", timeout=10)
    assert js.status_code == 200 and js.headers["Content-Type"].startswith("text/javascript")
    assert requests.get(server.url + "/web/style.css", timeout=10).headers["Content-Type"].startswith("text/css")
    missing = requests.get(server.url + "/web/nope.js", timeout=10)
    assert missing.status_code == 404 and "nope.js" in missing.json()["error"]["message"]
    assert requests.get(server.url + "/web/../CMakeLists.txt", timeout=10).status_code in (400, 404)
    # The API itself still needs the token.
    assert requests.get(server.url + "/v1/models", timeout=10).status_code == 401


def test_models_carry_prices_and_sizes(server):
    models = {m["id"]: m for m in requests.get(server.url + "/v1/models", headers=server.headers(), timeout=10).json()["data"]}
    assert models[CHAT]["pricing"] == {"input_per_million": 0.75, "output_per_million": 2.25}
    assert models[IMAGE]["pricing"] == {"per_image": 0.06}
    assert models[IMAGE]["sizes"] == ["256x256", "1280x768", "768x1280"]
    assert models[IMAGE]["steps"] == 2


def test_image_progress_stream(server):
    body = {"model": IMAGE, "prompt": "a red cube", "n": 2, "seed": 11, "response_format": "b64_json", "stream": True}
    with requests.post(server.url + "/v1/images/generations", headers=server.headers(), json=body, stream=True,
                       timeout=300) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        payloads = [line[len("data: "):] for line in response.iter_lines(decode_unicode=True) if line.startswith("data: ")]
    assert payloads[-1] == "[DONE]"
    events = [json.loads(p) for p in payloads[:-1]]
    progress = [e for e in events if e["type"] == "progress"]
    assert [e["total"] for e in progress] == [4] * len(progress)  # 2 images of 2 steps
    steps = [e["step"] for e in progress]
    assert steps == sorted(steps) and steps[-1] == 4 and len(steps) >= 3
    result = events[-1]
    assert result["type"] == "result" and [d["seed"] for d in result["data"]] == [11, 12]
    assert all(d["b64_json"] for d in result["data"])
    # A bad request is still a plain JSON error, before any event.
    bad = requests.post(server.url + "/v1/images/generations", headers=server.headers(),
                        json={**body, "size": "3x3"}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "size"


def test_bad_token_is_refused_clearly(browser, server):
    browser.get(server.url + "/")
    browser.execute_script("localStorage.clear()")
    browser.refresh()
    wait(browser, lambda d: by_id(d, "token").is_displayed())
    by_id(browser, "token").send_keys("not-a-real-token", Keys.ENTER)
    wait(browser, lambda d: "refused" in by_id(d, "sign-in-error").text, message="no message for a bad token")
    assert "Incorrect or revoked API key" in by_id(browser, "sign-in-error").text
    assert not by_id(browser, "tabs").is_displayed()
    assert browser.execute_script("return localStorage.getItem('tessera.token')") is None


def test_markdown_renderer_escapes_and_formats(signed_in):
    html = signed_in.execute_async_script("""
        const done = arguments[arguments.length - 1];
        import('/web/markdown.js').then((m) => done(m.renderMarkdown(
          '<img src=x onerror=alert(1)> **bold** and `<b>code</b>`\\n\\n- one\\n- two\\n\\n1. first\\n\\n2. second\\n\\n' +
          '```python\\nprint("<hi>")\\n```\\n\\n```\\nunclosed <fence>')));""")
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<strong>bold</strong>" in html and "<code>&lt;b&gt;code&lt;/b&gt;</code>" in html
    assert "<ul><li>one</li><li>two</li></ul>" in html and "<ol><li>first</li><li>second</li></ol>" in html
    assert '<pre data-lang="python"><code>print(&quot;&lt;hi&gt;&quot;)</code></pre>' in html
    assert "<pre><code>unclosed &lt;fence&gt;</code></pre>" in html


def test_chat_streams_a_reply_token_by_token(signed_in, server):
    d = signed_in
    assert CHAT in [o.get_attribute("value") for o in Select(by_id(d, "chat-model")).options]
    Select(by_id(d, "chat-model")).select_by_value(CHAT)
    by_id(d, "system-prompt").send_keys("You are a concise assistant.")
    by_id(d, "temperature").send_keys(Keys.HOME)  # greedy: the README's screenshot stays the same
    assert by_id(d, "temperature-value").text == "0"
    by_id(d, "max-tokens").clear()
    by_id(d, "max-tokens").send_keys("48")
    box = by_id(d, "chat-input")
    # Shift+Enter is a new line, Enter sends.
    box.send_keys("Name three colors of the sea", Keys.SHIFT, Keys.ENTER, Keys.SHIFT)
    assert box.get_attribute("value") == "Name three colors of the sea\n"
    assert not d.find_elements(By.CSS_SELECTOR, ".message")
    box.send_keys("and describe each briefly.", Keys.ENTER)
    reply = wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, ".message.assistant .reply"))[-1]
    seen = []
    deadline = time.time() + 120
    while time.time() < deadline:
        text = reply.text
        if text and (not seen or seen[-1] != text):
            seen.append(text)
        if "streaming" not in reply.get_attribute("class"):
            break
        time.sleep(0.02)
    assert "streaming" not in reply.get_attribute("class"), "the reply did not finish"
    assert len(seen) >= 3, f"the reply did not grow in steps: {seen}"
    assert len(seen[0]) < len(seen[-1]), seen
    stats = d.find_elements(By.CSS_SELECTOR, ".message.assistant .stats")[-1].text
    assert re.search(r"^\d+ tokens · [\d.]+ tokens/s · [\d.]+ s · \$", stats), stats
    # The second turn carries the first: the code snippet shows the whole conversation.
    by_id(d, "show-code").click()
    code = wait(d, lambda d: by_id(d, "code-text").text)
    assert f'base_url="{server.url}/v1"' in code and f'model="{CHAT}"' in code
    assert '{"role": "system", "content": "You are a concise assistant."}' in code
    assert '{"role": "assistant", "content": ' in code and "max_tokens=48" in code and "temperature=0," in code
    shot(d, "playground-code.png", docs=False)
    by_id(d, "close-code").click()
    # The snippet runs as pasted, with the official SDK, against this server.
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TESSERA_TOKEN": server.token})
    assert ran.returncode == 0 and ran.stdout.strip(), ran.stderr[-2000:]
    shot(d, "playground-chat.png")


def test_stop_cancels_the_sequence_on_the_server(signed_in, server):
    d = signed_in
    before = server.metric("tessera_sequences_cancelled", endpoint=CHAT) or 0
    by_id(d, "new-chat").click()
    assert not d.find_elements(By.CSS_SELECTOR, ".message")
    by_id(d, "max-tokens").clear()
    by_id(d, "max-tokens").send_keys("2000")
    by_id(d, "temperature").send_keys(Keys.END)  # hot sampling rambles on
    by_id(d, "chat-input").send_keys("Write a very long story about a dragon and a knight, in ten chapters.", Keys.ENTER)
    reply = wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, ".message.assistant .reply"))[-1]
    wait(d, lambda d: len(reply.text) > 30, timeout=60, message="no reply to stop")
    assert by_id(d, "stop").is_displayed()
    by_id(d, "stop").click()
    wait(d, lambda d: by_id(d, "send").is_displayed(), message="stopping did not end the request")
    length = len(reply.text)
    stats = d.find_elements(By.CSS_SELECTOR, ".message.assistant .stats")[-1].text
    assert "stopped" in stats, stats
    try:
        wait(d, lambda _: (server.metric("tessera_sequences_cancelled", endpoint=CHAT) or 0) > before, timeout=15)
    except TimeoutException:
        pytest.fail("the server did not cancel the sequence after Stop")
    time.sleep(0.5)
    assert len(reply.text) == length  # nothing arrives after Stop


def test_images_tab_generates_with_progress_and_seed(signed_in, server):
    d = signed_in
    by_id(d, "tab-images").click()
    wait(d, lambda d: by_id(d, "panel-images").is_displayed())
    assert [o.get_attribute("value") for o in Select(by_id(d, "size")).options] == ["256x256", "1280x768", "768x1280"]
    Select(by_id(d, "preset")).select_by_visible_text("Studio portrait")
    assert "prime lens, studio lighting, white background" in by_id(d, "image-prompt").get_attribute("value")
    assert "blurry, ugly, deformed, amateur, vector, illustration" in by_id(d, "negative-prompt").get_attribute("value")
    by_id(d, "random-seed").click()
    by_id(d, "seed").send_keys("1234")
    by_id(d, "generate").click()
    steps = set()
    deadline = time.time() + 180
    while time.time() < deadline and not d.find_elements(By.CSS_SELECTOR, "#gallery img"):
        steps.add(by_id(d, "progress-label").text)
        time.sleep(0.05)
    img = wait(d, lambda d: d.find_element(By.CSS_SELECTOR, "#gallery img"), timeout=5)
    wait(d, lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) == 256)
    assert any(re.fullmatch(r"Step [12] of 2", s) for s in steps), steps
    card = d.find_element(By.CSS_SELECTOR, "#gallery .result")
    assert card.find_element(By.CSS_SELECTOR, ".seed-value").text == "Seed 1234"
    link = card.find_element(By.LINK_TEXT, "Download")
    assert link.get_attribute("download") == "tessera-seed-1234.png"
    assert by_id(d, "progress-label").text.startswith("Done")
    # A second image with a random seed; "Use this seed" puts a result's seed back in the form.
    by_id(d, "random-seed").click()
    by_id(d, "image-prompt").send_keys(Keys.ENTER)
    wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery .result")) == 2, timeout=180)
    newest = d.find_element(By.CSS_SELECTOR, "#gallery .result")
    seed = re.fullmatch(r"Seed (\d+)", newest.find_element(By.CSS_SELECTOR, ".seed-value").text).group(1)
    newest.find_element(By.XPATH, ".//button[text()='Use this seed']").click()
    assert by_id(d, "seed").get_attribute("value") == seed and not by_id(d, "random-seed").is_selected()
    shot(d, "playground-images.png")


def test_narrow_screen_has_no_horizontal_scroll(signed_in):
    d = signed_in
    d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": 375, "height": 812, "deviceScaleFactor": 1, "mobile": True})
    try:
        for tab in ("tab-chat", "tab-images"):
            by_id(d, tab).click()
            time.sleep(0.2)
            width = d.execute_script("return document.documentElement.scrollWidth")
            assert width <= 375 + 2, f"{tab}: the page is {width}px wide at 375px"
            shot(d, f"playground-{tab[4:]}-375.png", docs=False)
    finally:
        d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                          {"width": WIDE[0], "height": WIDE[1], "deviceScaleFactor": 1, "mobile": False})


def test_every_request_stayed_on_the_server(signed_in, server):
    urls = collect_requests(signed_in)
    network = [u for u in urls if re.match(r"^(https?|wss?|ftp):", u)]
    assert any(u.endswith("/web/app.js") for u in network) and any("/v1/models" in u for u in network)
    elsewhere = [u for u in network if not u.startswith(server.url + "/")]
    assert not elsewhere, elsewhere
