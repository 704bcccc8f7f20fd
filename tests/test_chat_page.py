"""The chat page (served at `/`, files in nanogpt4/serve/web/) in a real headless Chromium driven by Selenium:
API key, system message, model picker, a streamed answer, the conversation restored after a reload, the usage
cap's message, the Stop button, and an attached image sent to a vision model (and refused by a text one).

The server is the real app on 127.0.0.1 (a free port; it stops when the module's tests end, or by itself after
SERVER_LIFETIME seconds) with keys and a cap of 2 messages per 4 hours. Its model is a tiny random one on the
tiny corpus' tokenizer (`local_run`'s) that never samples a stop token, with a 2,048-token context, so an answer
always runs to `max_tokens`: a long generation is there for the Stop button to interrupt.

Chromium and its driver come from Debian (`apt-get install chromium chromium-driver`, done by setup.sh). Without
them the test is skipped, except in CI (CI=true), where that is a failure.
"""
import importlib.util
import json
import os
import re
import threading
import time
import urllib.error
import urllib.request

import pytest

from nanogpt4 import chat, runs
from nanogpt4.serve import api, db as state, keys, limits, models as M

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SNAPSHOT = "nano4-20261201"
VISION = "vision-20261201"  # a tiny random vision run (conftest's vision_run)
CAP = 2  # chat-page messages per user per 4 hours
SERVER_LIFETIME = 300  # seconds: the server stops by itself after this, whatever happens to the test
WAIT = 20  # seconds for anything the page waits on


# ----------------------------------------------------------------------------- the server

@pytest.fixture(scope="module")
def server(endless_run, vision_run, tmp_path_factory):
    sha = runs.checkpoint_id(endless_run).split(":")[1]
    models = M.parse({"snapshots": {SNAPSHOT: {"run": str(endless_run), "checkpoint_sha256": sha},
                                    VISION: {"run": str(vision_run),
                                             "checkpoint_sha256": runs.checkpoint_id(vision_run).split(":")[1]}},
                      "aliases": {"nano4": SNAPSHOT}})
    db = state.connect(state.home(tmp_path_factory.mktemp("home")))
    key, record = keys.create(db, "chat")
    stop_key, stop_record = keys.create(db, "stop")
    image_key, image_record = keys.create(db, "image")
    served = api.load(models, device="cpu", max_rows=4)
    app = api.create_app(models, served, db, chat_cap=limits.ChatCap(CAP, 4))
    srv, thread, url = api.in_thread(app)
    lifetime = threading.Timer(SERVER_LIFETIME, lambda: setattr(srv, "should_exit", True))
    lifetime.daemon = True
    lifetime.start()
    yield dict(url=url, db=db, key=key, key_id=record.id, stop_key=stop_key,
               stop_key_id=stop_record.id, image_key=image_key, image_key_id=image_record.id,
               tok=served[SNAPSHOT].tok)
    lifetime.cancel()
    srv.should_exit = True
    thread.join(10)
    for s in served.values():
        s.close()


def usage_rows(server, key_id):
    return server["db"].execute("SELECT client, model, prompt_tokens, completion_tokens, finish FROM usage "
                                "WHERE key_id = ? ORDER BY id", (key_id,)).fetchall()


# ----------------------------------------------------------------------------- the browser

@pytest.fixture(scope="module")
def browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    if importlib.util.find_spec("selenium") is None:
        missing.append("the selenium package (pip install -e '.[test]')")
    if missing:
        why = f"the chat page test needs {' and '.join(missing)}: run ./setup.sh (apt-get install chromium " \
              f"chromium-driver)"
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(why)
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,820",
                 "--disable-gpu", "--no-first-run", "--disable-extensions"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    yield driver
    driver.quit()


def until(driver, condition, what, timeout=WAIT):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: condition(d), message=what)


def el(driver, id_):
    from selenium.webdriver.common.by import By
    return driver.find_element(By.ID, id_)


def bubbles(driver):
    """(role, who, text, note) of every message shown."""
    return [tuple(row) for row in driver.execute_script(
        "return [...document.querySelectorAll('#messages .msg')].map(m => [m.classList.contains('user') ? "
        "'user' : 'assistant', m.querySelector('.who').textContent, m.querySelector('.text').textContent, "
        "(m.querySelector('.note') || {}).textContent || null])")]


def open_page(driver, url):
    driver.get(url + "/")
    until(driver, lambda d: d.execute_script("return document.body.classList.contains('ready')"),
          "the page did not finish loading")


def set_key(driver, key):
    box = el(driver, "api-key")
    box.clear()
    box.send_keys(key)
    until(driver, lambda d: d.execute_script("return localStorage.getItem('nanogpt4.apiKey')") == key
          and el(d, "model").get_attribute("value"), "the models were not loaded with the key")


def set_field(driver, id_, text):
    box = el(driver, id_)
    box.clear()
    box.send_keys(text)


def watch_answer(driver):
    """Log (ms, text length) of the streaming answer at each DOM mutation batch, in window.answerLog."""
    driver.execute_script("""
        window.answerLog = [];
        new MutationObserver(() => {
          const text = document.querySelector('#messages .msg.streaming .text');
          if (text) window.answerLog.push([performance.now(), text.textContent.length]);
        }).observe(document.getElementById('messages'), {childList: true, subtree: true, characterData: true});
    """)


def send(driver, text):
    set_field(driver, "input", text)
    el(driver, "send").click()


def idle(driver):
    return el(driver, "send").is_displayed() and not el(driver, "stop").is_displayed()


# ----------------------------------------------------------------------------- the tests

def test_chat_streams_restores_and_hits_the_cap(browser, server):
    from selenium.webdriver.support.ui import Select
    open_page(browser, server["url"])
    assert el(browser, "auth").is_displayed(), "the server needs keys: the key field must show"
    assert el(browser, "cap-info").text == f"Cap: {CAP} messages every 4 hours"
    set_key(browser, server["key"])
    picker = Select(el(browser, "model"))
    assert {o.text for o in picker.options} == {"nano4", SNAPSHOT, VISION}  # from GET /v1/models
    assert picker.first_selected_option.text == "nano4"  # an alias is the default
    picker.select_by_value(SNAPSHOT)
    system = "You answer briefly."
    set_field(browser, "system", system)
    set_field(browser, "max-tokens", "60")

    watch_answer(browser)
    send(browser, "Hello, who are you?")
    until(browser, idle, "the answer did not finish")
    shown = bubbles(browser)
    assert [b[:2] for b in shown] == [("user", "You"), ("assistant", SNAPSHOT)]
    assert shown[0][2] == "Hello, who are you?" and shown[1][2] and shown[1][3] == "Stopped at the token limit."
    log = browser.execute_script("return window.answerLog")  # the answer grew in place, piece by piece
    grew = sorted({n for _, n in log if n})  # (that it shows before it is finished: test_stop_keeps_…)
    assert len(grew) >= 2 and grew[-1] == len(shown[1][2]), f"the answer did not appear in pieces: {log}"
    # the server got the system message first, from the chat page, for the picked snapshot
    rows = usage_rows(server, server["key_id"])
    sent = [{"role": "system", "content": system}, {"role": "user", "content": "Hello, who are you?"}]
    assert rows == [("chat-page", SNAPSHOT, len(chat.render(server["tok"], sent).ids), 60, "length")]
    assert not el(browser, "error").is_displayed()

    browser.refresh()  # the conversation, system message, model, limit and key are kept in the browser
    until(browser, lambda d: el(d, "model").get_attribute("value") == SNAPSHOT, "the model was not restored")
    assert bubbles(browser) == shown
    assert el(browser, "system").get_attribute("value") == system
    assert el(browser, "max-tokens").get_attribute("value") == "60"
    assert el(browser, "api-key").get_attribute("value") == server["key"]

    send(browser, "And then?")
    until(browser, lambda d: idle(d) and len(bubbles(d)) == 4 and bubbles(d)[-1][2], "the second answer")
    rows = usage_rows(server, server["key_id"])
    assert len(rows) == CAP and rows[1][2] > rows[0][2] + 60  # the whole conversation was sent

    send(browser, "One more?")
    cap = until(browser, lambda d: el(d, "cap-message").is_displayed() and el(d, "cap-message"),
                "the usage cap message did not show")
    request = urllib.request.Request(
        server["url"] + "/v1/chat/completions", method="POST",
        data=json.dumps({"model": "nano4", "messages": [{"role": "user", "content": "hi"}]}).encode(),
        headers={"Authorization": f"Bearer {server['key']}", "Content-Type": "application/json",
                 "X-Nanogpt4-Client": "chat-page"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    error = json.loads(refused.value.read())["error"]
    assert refused.value.code == 429 and error["code"] == "usage_cap_reached"
    assert re.fullmatch(rf"You've reached the current usage cap of {CAP} messages every 4 hours\. Try again "
                        rf"after \d\d:\d\d UTC\.", error["message"])
    assert el(browser, "cap-text").text == error["message"] and error["message"] in cap.text
    if os.environ.get("CHAT_PAGE_SCREENSHOT"):
        browser.save_screenshot(os.environ["CHAT_PAGE_SCREENSHOT"])
    # the refused message is back in the input, which still works; nothing else changed
    assert el(browser, "input").get_attribute("value") == "One more?" and el(browser, "input").is_enabled()
    assert idle(browser) and len(bubbles(browser)) == 4 and not el(browser, "error").is_displayed()
    assert len(usage_rows(server, server["key_id"])) == CAP


def test_stop_keeps_the_partial_answer(browser, server):
    open_page(browser, server["url"])
    el(browser, "new-chat").click()
    assert bubbles(browser) == []
    set_key(browser, server["stop_key"])  # a user of its own: the first test used up its key's cap
    set_field(browser, "max-tokens", "2000")  # ~5 s of generation: it runs until stopped

    send(browser, "Tell me a long story.")
    until(browser, lambda d: len(bubbles(d)) == 2 and len(bubbles(d)[1][2]) > 10, "no streamed text appeared")
    assert el(browser, "stop").is_displayed(), "text shows while the answer is still being generated"
    el(browser, "stop").click()
    until(browser, idle, "Stop did not end the answer")
    partial = bubbles(browser)
    assert partial[1][2] and partial[1][3] == "Stopped."
    deadline = time.time() + 10  # the server cancels the generation when the page drops the stream
    while not (rows := usage_rows(server, server["stop_key_id"])) and time.time() < deadline:
        time.sleep(0.05)
    assert len(rows) == 1 and rows[0][4] == "cancelled" and rows[0][3] < 2000, rows
    time.sleep(0.3)
    assert bubbles(browser) == partial  # nothing more arrives
    browser.refresh()
    until(browser, lambda d: bubbles(d) == partial, "the stopped answer was not kept")


def test_attached_image_goes_to_a_vision_model(browser, server, tmp_path):
    from PIL import Image
    from selenium.webdriver.support.ui import Select
    path = tmp_path / "red.png"
    Image.new("RGB", (48, 32), (210, 20, 20)).save(path)
    open_page(browser, server["url"])
    el(browser, "new-chat").click()
    set_key(browser, server["image_key"])
    Select(el(browser, "model")).select_by_value(VISION)
    set_field(browser, "max-tokens", "3")
    assert not el(browser, "attachment").is_displayed()
    browser.execute_script("document.getElementById('attach-file').hidden = false")  # what the Image button opens
    el(browser, "attach-file").send_keys(str(path))
    until(browser, lambda d: el(d, "attachment").is_displayed(), "the attached image was not previewed")
    send(browser, "What colour is it?")
    until(browser, lambda d: idle(d) and usage_rows(server, server["image_key_id"]), "the image message was not answered")
    src = browser.execute_script("const i = document.querySelector('#messages .msg.user img'); return i && i.src")
    assert src and src.startswith("data:image/png;base64,"), "the user's bubble shows the image"
    assert not el(browser, "attachment").is_displayed(), "the image went with the message"
    system = el(browser, "system").get_attribute("value").strip()  # kept from the first test
    sent = [{"role": "system", "content": system}] if system else []
    sent += [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": src}},
                                          {"type": "text", "text": "What colour is it?"}]}]
    (row,) = usage_rows(server, server["image_key_id"])
    assert row[1] == VISION and row[2] == len(chat.render(server["tok"], sent, image=16).ids)  # image tokens billed
    browser.refresh()  # the conversation, image included, is restored
    until(browser, lambda d: d.execute_script("return !!document.querySelector('#messages .msg.user img')"),
          "the image was not restored after a reload")
    Select(el(browser, "model")).select_by_value(SNAPSHOT)  # a text model refuses the image in the history
    send(browser, "And now?")
    until(browser, lambda d: el(d, "error").is_displayed(), "no error for an image sent to a text model")
    assert "does not accept image input" in el(browser, "error").text
    assert el(browser, "input").get_attribute("value") == "And now?"
