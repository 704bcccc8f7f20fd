"""The OpenAI-compatible API through the official `openai` client against a tiny checkpoint: chat, streaming, n,
stop, seeds, logprobs, usage counts, models and snapshots, and OpenAI-shaped errors. The server listens on
127.0.0.1 only and stops when the module's tests end."""
import datetime as dt
import hashlib
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest

from nanogpt4 import chat, runs
from nanogpt4.cli import main as cli
from nanogpt4.model import vision
from nanogpt4.serve import api, db as state, keys, limits, models as M, monitor, usage


@pytest.fixture(scope="module")
def server(local_run, endless_run, vision_run, tmp_path_factory):
    sha = runs.checkpoint_id(local_run).split(":")[1]
    models = M.parse({"snapshots": {"nano4-20261201": {"run": str(local_run), "checkpoint_sha256": sha},
                                    "nano4-20250101": {"run": str(local_run), "checkpoint_sha256": sha,
                                                       "deprecated_after": "2025-06-01"},
                                    "endless-20261201": {"run": str(endless_run), "checkpoint_sha256":
                                                         runs.checkpoint_id(endless_run).split(":")[1]},
                                    "vision-20261201": {"run": str(vision_run), "checkpoint_sha256":
                                                        runs.checkpoint_id(vision_run).split(":")[1]}},
                      "aliases": {"nano4": "nano4-20261201"}})
    home = state.home(tmp_path_factory.mktemp("home"))
    db = state.connect(home)
    key, _ = keys.create(db, "tests", rpm=10_000, tpm=10_000_000)
    revoked, k = keys.create(db, "old")
    keys.revoke(db, k.id)
    served = api.load(models, device="cpu", max_rows=8)
    cap = limits.ChatCap(2, 1.0)
    app = api.create_app(models, served, db, moderator=Marker(), chat_cap=cap,
                         monitor=monitor.Monitor(Marker(), suspend_rate=0.5, min_requests=4))
    srv, thread, url = api.in_thread(app)
    yield dict(url=url, served=served, key=key, revoked=revoked, db=db, models=models,
               home=home, cap=cap)
    srv.should_exit = True
    thread.join(10)
    for s in served.values():
        s.close()


class Marker:
    """A stand-in moderation classifier for the monitoring tests: flags any text containing FLAGME."""
    name = "marker-moderation"
    CATEGORIES = ("harassment", "violence")

    def classify(self, texts):
        return [dict(flagged="FLAGME" in t, categories={c: "FLAGME" in t for c in self.CATEGORIES},
                     category_scores={c: float("FLAGME" in t) for c in self.CATEGORIES}) for t in texts]


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=server["key"], timeout=30, max_retries=0)


def tok(server):
    return server["served"]["nano4-20261201"].tok


MSGS = [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "Name a colour."}]


def test_chat_completion_with_usage_seed_and_n(client, server):
    r = client.chat.completions.create(model="nano4", messages=MSGS, max_tokens=12, temperature=0.9, seed=5, n=3)
    assert r.object == "chat.completion" and r.model == "nano4-20261201" and len(r.choices) == 3
    assert [c.index for c in r.choices] == [0, 1, 2] and all(c.message.role == "assistant" for c in r.choices)
    assert all(c.finish_reason in ("stop", "length") for c in r.choices)
    from nanogpt4 import chat
    assert r.usage.prompt_tokens == len(chat.render(tok(server), MSGS).ids)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens <= r.usage.prompt_tokens + 36
    again = client.chat.completions.create(model="nano4-20261201", messages=MSGS, max_tokens=12, temperature=0.9,
                                           seed=5, n=3)
    assert [c.message.content for c in again.choices] == [c.message.content for c in r.choices]


def test_chat_logprobs_and_stop(client):
    r = client.chat.completions.create(model="nano4", messages=MSGS, max_tokens=10, temperature=0, logprobs=True,
                                       top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert "".join(t.token for t in content).startswith(r.choices[0].message.content[:5])
    assert all(t.logprob <= 0 and len(t.top_logprobs) <= 3 for t in content)
    text = r.choices[0].message.content
    if len(text) >= 4:
        cut = client.chat.completions.create(model="nano4", messages=MSGS, max_tokens=10, temperature=0,
                                             stop=[text[2:4]])
        assert cut.choices[0].message.content == text[:text.find(text[2:4])]
        assert cut.choices[0].finish_reason == "stop"


def test_streaming_chat_equals_the_plain_answer(client):
    plain = client.chat.completions.create(model="nano4", messages=MSGS, max_tokens=15, temperature=0)
    chunks = list(client.chat.completions.create(model="nano4", messages=MSGS, max_tokens=15, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_text_completions_plain_and_streamed(client, server):
    r = client.completions.create(model="nano4", prompt="The cat", max_tokens=8, temperature=0, logprobs=2)
    assert r.object == "text_completion" and r.usage.prompt_tokens == 1 + len(tok(server).encode("The cat"))
    assert "".join(r.choices[0].logprobs.tokens).startswith(r.choices[0].text) or r.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="nano4", prompt="The cat", max_tokens=8, temperature=0, stream=True) if c.choices)
    assert streamed == r.choices[0].text


def test_models_and_snapshots(client):
    ids = [m.id for m in client.models.list().data]
    assert {"nano4", "nano4-20261201"} <= set(ids) and "nano4-20250101" not in ids  # deprecated: not offered
    assert client.models.retrieve("nano4").id == "nano4"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("gpt-5")
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError) as e:  # deprecated: a clear error naming the date
        client.chat.completions.create(model="nano4-20250101", messages=MSGS, max_tokens=2)
    assert e.value.body["code"] == "model_deprecated" and "2025-06-01" in e.value.body["message"]


@pytest.mark.parametrize("kw,param,code", [
    (dict(max_tokens=-1), "max_tokens", "invalid_value"),
    (dict(max_tokens="10"), "max_tokens", "invalid_value"),
    (dict(n=10_000), "n", "invalid_value"),
    (dict(temperature=3), "temperature", "invalid_value"),
    (dict(tools=[{"type": "function", "function": {"name": "f"}}]), "tools", "unsupported_parameter"),
    (dict(max_tokens=10_000), "messages", "context_length_exceeded"),
    (dict(messages=[{"role": "wizard", "content": "hi"}]), "messages", None),
    (dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,x"}}]}]),
     "messages", "image_input_not_supported"),
    (dict(stop=["a", "b", "c", "d", "e"]), "stop", None),
    (dict(n=9), "n", None),  # more than the engine's 8 rows
    (dict(top_logprobs=2), "top_logprobs", None),  # without logprobs
    (dict(stream_options={"include_usage": True}), "stream_options", None),  # without stream
    (dict(response_format={"type": "json_object"}), "response_format", "unsupported_parameter"),
])
def test_bad_requests_get_openai_errors(client, kw, param, code):
    args = dict(model="nano4", messages=MSGS, max_tokens=4)
    args.update(kw)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**args)
    assert e.value.status_code == 400 and e.value.body["param"] == param and e.value.body["code"] == code
    assert e.value.body["type"] == "invalid_request_error" and e.value.body["message"]


def image_part(colour=(200, 30, 30), fmt="PNG", cut=None, size=(40, 30), **detail):
    import base64
    import io
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, fmt)
    data = buf.getvalue()[:cut]
    return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(data).decode(),
                                               **detail}}


def test_vision_model_reads_images_and_counts_their_tokens(client, server):
    def ask(*images, **kw):
        msgs = [{"role": "user", "content": [*images, {"type": "text", "text": "What colour?"}]}]
        return msgs, client.chat.completions.create(model="vision-20261201", messages=msgs, max_tokens=3,
                                                    temperature=0, logprobs=True, top_logprobs=5, **kw)
    msgs, red = ask(image_part())
    s = server["served"]["vision-20261201"]
    assert s.vision.cfg.tokens == 16
    rendered = chat.render(s.tok, msgs, image=16)  # usage counts each image's placeholder tokens
    assert red.usage.prompt_tokens == len(rendered.ids) == len(chat.render(s.tok, msgs).ids) + 15
    _, blue = ask(image_part((30, 30, 200)))
    _, red_again = ask(image_part())
    first = lambda r: {t.token: t.logprob for t in r.choices[0].logprobs.content[0].top_logprobs}  # noqa: E731
    assert first(red) == first(red_again) and first(red) != first(blue)  # the answer depends on the pixels
    _, two = ask(image_part(), image_part((30, 30, 200)))
    assert two.usage.prompt_tokens == red.usage.prompt_tokens + 16
    with pytest.raises(openai.BadRequestError) as e:  # large: 2 × 2 tiles, each after "row r, column c:"; the
        ask(image_part(size=(300, 200)))  # 64 placeholders + markers overflow this test model's 128 tokens
    markers = sum(len(s.tok.encode(f"row {r}, column {c}:")) for r in (1, 2) for c in (1, 2))
    big = [{"role": "user", "content": [image_part(size=(300, 200)), {"type": "text", "text": "What colour?"}]}]
    assert len(vision.render(s.tok, big, s.vision.cfg)[0].ids) == red.usage.prompt_tokens + 3 * 16 + markers
    assert e.value.body["code"] == "context_length_exceeded"
    assert f"{red.usage.prompt_tokens + 3 * 16 + markers} in the prompt" in e.value.body["message"]
    _, low = ask(image_part(size=(300, 200), detail="low"))  # OpenAI's detail: "low" is one view
    assert low.usage.prompt_tokens == red.usage.prompt_tokens
    with pytest.raises(openai.BadRequestError) as e:
        ask(image_part(detail="ultra"))
    assert e.value.body["param"] == "messages" and "detail" in e.value.body["message"]
    bad = {"https://example.com/cat.png": "no network", "data:image/png;base64,@@": "malformed"}
    for url, why in bad.items():
        with pytest.raises(openai.BadRequestError) as e:
            ask({"type": "image_url", "image_url": {"url": url}})
        assert e.value.body["code"] == "invalid_image" and why in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        ask(image_part(cut=50))
    assert e.value.body["code"] == "invalid_image" and "truncated" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        ask(*[image_part()] * (api.MAX_IMAGES + 1))
    assert e.value.body["code"] == "too_many_images"
    ok = client.chat.completions.create(model="vision-20261201", messages=MSGS, max_tokens=2)  # text alone works
    assert ok.choices[0].message.role == "assistant"


def raw(url, body, key, content_type="application/json"):
    req = urllib.request.Request(url + "/v1/chat/completions", data=body,
                                 headers={"Content-Type": content_type, "Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_hostile_bodies(server):
    url = server["url"]
    for body, status in ((b"{not json", 400), (b"\xff\xfe\x00", 400), (b"[1, 2]", 400),
                         (json.dumps({"model": "nano4", "messages": MSGS, "max_tokens": 2,
                                      "pad": "x" * (20 << 20)}).encode(), 413),
                         (json.dumps({"model": "nano4", "max_tokens": 2,
                                      "messages": [{"role": "user", "content": "hi"}] * 10_000}).encode(), 400),
                         (json.dumps({"model": "nano4", "max_tokens": 2,  # 1 MB: past the context
                                      "messages": [{"role": "user", "content": "word " * (1 << 18)}]}).encode(), 400)):
        got, payload = raw(url, body, server["key"])
        assert got == status and set(payload["error"]) == {"message", "type", "param", "code"}, (body[:30], payload)
    got, payload = raw(url, json.dumps({"model": "nano4", "messages": MSGS, "max_tokens": 3}).encode(), server["key"])
    assert got == 200 and payload["choices"]  # and the server still serves
    with urllib.request.urlopen(url + "/health", timeout=10) as r:
        assert json.loads(r.read())["status"] == "ok"
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url + "/v1/nothing", timeout=10)
    assert e.value.code == 404 and json.loads(e.value.read())["error"]["code"] == "unknown_url"


def usage_row(server, request_id, deadline=10):
    """(finish, completion tokens) of a request's usage row, waiting for it to be committed."""
    end = time.time() + deadline
    while time.time() < end:
        row = server["db"].execute("SELECT finish, completion_tokens FROM usage WHERE request_id = ?",
                                   (request_id,)).fetchone()
        if row:
            return row
        time.sleep(0.02)
    return None


def test_a_client_that_leaves_mid_stream_is_cancelled_and_metered(client, server):
    eng = server["served"]["endless-20261201"].engine  # never stops by itself: only cancelling ends it early
    stream = client.chat.completions.create(model="endless-20261201", messages=MSGS, max_tokens=1500, stream=True)
    first = next(c for c in stream if c.choices[0].delta.content)  # some text has arrived
    stream.close()  # the client goes away
    deadline = time.time() + 10
    while (eng.rows or eng.pending) and time.time() < deadline:
        time.sleep(0.01)
    assert not eng.rows and not eng.pending
    finish, n = usage_row(server, first.id)
    assert finish == "cancelled" and 0 < n < 1500


def test_a_client_that_leaves_before_its_stream_starts_is_cancelled_metered_and_uncapped(server):
    eng = server["served"]["endless-20261201"].engine
    key = keys.create(server["db"], "gone")[0]
    body = json.dumps(dict(model="endless-20261201", messages=MSGS, max_tokens=1500, stream=True)).encode()
    port = int(server["url"].rsplit(":", 1)[1])
    count = "SELECT COUNT(*) FROM usage u JOIN keys k ON k.id = u.key_id WHERE k.name = 'gone'"
    for i in range(2):  # the cap's 2 messages: each in-flight slot must come back
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"X-Nanogpt4-Client: chat-page\r\nAuthorization: Bearer " + key.encode() +
                         b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        # closed at once, before any answer
        deadline = time.time() + 10
        while time.time() < deadline and server["db"].execute(count).fetchone()[0] < i + 1:
            time.sleep(0.01)
        with server["cap"].lock:  # the usage row commits under this lock, and the slot is released before it opens
            assert not eng.rows and not eng.pending and not server["cap"].inflight
    rows = server["db"].execute("SELECT u.finish, u.completion_tokens FROM usage u JOIN keys k ON k.id = u.key_id "
                                "WHERE k.name = 'gone'").fetchall()
    assert len(rows) == 2 and all(f == "cancelled" and n < 1500 for f, n in rows)


def test_a_snapshot_whose_checkpoint_changed_is_refused(local_run):
    models = M.parse({"snapshots": {"nano4-20261201": {"run": str(local_run), "checkpoint_sha256": "0" * 64}}})
    with pytest.raises(runs.RunError, match="no checkpoint has weights with sha256"):
        api.load(models, device="cpu")


def test_models_file_errors(tmp_path):
    for cfg, match in (({}, "non-empty 'snapshots'"), ({"snapshots": {"Bad Name": {"run": "x", "checkpoint_sha256": "y"}}},
                                                           "model name"),
                       ({"snapshots": {"a": {"run": "x"}}}, "needs 'run' and 'checkpoint_sha256'"),
                       ({"snapshots": {"a": {"run": "x", "checkpoint_sha256": "y"}}, "aliases": {"b": "c"}},
                        "not a snapshot"),
                       ({"snapshots": {"a": {"run": "x", "checkpoint_sha256": "y", "deprecated_after": "soon"}}},
                        "not a date")):
        with pytest.raises(M.ModelsError, match=match):
            M.parse(cfg)
    ok = M.parse({"snapshots": {"a-20261201": {"run": "x", "checkpoint_sha256": "y", "deprecated_after": "2027-01-01"}},
                  "aliases": {"a": "a-20261201"}})
    assert ok.resolve("a").name == "a-20261201" and not ok.resolve("a").deprecated(dt.date(2026, 12, 31))
    assert ok.resolve("a").deprecated(dt.date(2027, 1, 2)) and ok.resolve("a").created > 0


def test_keys_are_required_checked_and_revocable(server):
    def call(key):
        c = openai.OpenAI(base_url=server["url"] + "/v1", api_key=key, timeout=30, max_retries=0)
        return c.chat.completions.create(model="nano4", messages=MSGS, max_tokens=2)
    with pytest.raises(openai.AuthenticationError) as e:
        call("sk-nano-wrong")
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.PermissionDeniedError) as e:
        call(server["revoked"])
    assert e.value.status_code == 403 and e.value.body["code"] == "revoked_api_key"
    req = urllib.request.Request(server["url"] + "/v1/models")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 401 and json.loads(e.value.read())["error"]["code"] == "missing_api_key"
    assert call(server["key"]).choices


def test_keys_cli_shows_a_key_once_and_stores_only_its_hash(tmp_path, capsys):
    cli(["keys", "--home", str(tmp_path), "create", "--name", "alice", "--rpm", "10"])
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert key.startswith("sk-nano-") and len(key) > 40
    db = state.connect(tmp_path)
    assert keys.check(db, key).name == "alice" and keys.check(db, key + "x") is None
    stored = b"".join(f.read_bytes() for f in tmp_path.glob("nanogpt4.db*"))  # the database and its WAL
    assert keys.digest(key).encode() in stored and key.encode() not in stored  # only its sha256 is stored
    cli(["keys", "--home", str(tmp_path), "list"])
    listed = capsys.readouterr().out
    assert "alice" in listed and "active" in listed and key not in listed
    cli(["keys", "--home", str(tmp_path), "revoke", "1"])
    cli(["keys", "--home", str(tmp_path), "list"])
    assert "revoked" in capsys.readouterr().out and keys.check(db, key).revoked
    with pytest.raises(keys.KeysError, match="already revoked"):
        keys.revoke(db, 1)
    with pytest.raises(keys.KeysError, match="no key with id 7"):
        keys.revoke(db, 7)


def test_home_follows_the_option_then_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOGPT4_HOME", str(tmp_path / "env"))
    assert state.home() == tmp_path / "env" and state.home(tmp_path / "opt") == tmp_path / "opt"
    monkeypatch.delenv("NANOGPT4_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert state.home() == tmp_path / "xdg" / "nanogpt4"


# ----------------------------------------------------------------------------- limits, usage, monitoring, metrics

def new_key(server, **limits_):
    key, k = keys.create(server["db"], "t", **limits_)
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=key, timeout=30, max_retries=0), k


def test_requests_per_minute_limit_and_headers(server):
    c, _ = new_key(server, rpm=3, tpm=1_000_000)
    r = c.chat.completions.with_raw_response.create(model="nano4", messages=MSGS, max_tokens=2)
    charged = len(chat.render(tok(server), MSGS).ids) + 2
    assert r.headers["x-ratelimit-limit-requests"] == "3" and r.headers["x-ratelimit-remaining-requests"] == "2"
    assert r.headers["x-ratelimit-limit-tokens"] == "1000000"
    assert r.headers["x-ratelimit-remaining-tokens"] == str(1_000_000 - charged)  # max_tokens counted up front
    assert r.headers["x-ratelimit-reset-requests"].endswith("s") and r.parse().choices
    for _ in range(2):
        c.chat.completions.create(model="nano4", messages=MSGS, max_tokens=2)
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(model="nano4", messages=MSGS, max_tokens=2)
    h = e.value.response.headers
    assert e.value.status_code == 429 and e.value.body["type"] == "requests"
    assert e.value.body["code"] == "rate_limit_exceeded" and "(RPM): Limit 3" in e.value.body["message"]
    assert 1 <= int(h["retry-after"]) <= 20 and h["x-ratelimit-remaining-requests"] == "0"


def test_tokens_per_minute_counts_max_tokens_up_front(server):
    prompt = len(chat.render(tok(server), MSGS).ids)
    c, _ = new_key(server, rpm=100, tpm=prompt + 10)
    with pytest.raises(openai.RateLimitError) as e:  # can never fit: refused, nothing charged
        c.chat.completions.create(model="nano4", messages=MSGS, max_tokens=11)
    assert e.value.body["type"] == "tokens" and "Request too large" in e.value.body["message"]
    c.chat.completions.create(model="nano4", messages=MSGS, max_tokens=10, stop=["e"])  # charged 10, may use fewer
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(model="nano4", messages=MSGS, max_tokens=10)
    assert e.value.body["type"] == "tokens" and "(TPM)" in e.value.body["message"]
    assert int(e.value.response.headers["retry-after"]) >= 1


def test_usage_is_metered_per_key_model_and_day(server, capsys):
    c, k = new_key(server)
    seen = [c.chat.completions.create(model="nano4", messages=MSGS, max_tokens=6, n=2, seed=i).usage
            for i in range(2)]
    seen.append(c.completions.create(model="nano4", prompt="The cat", max_tokens=4).usage)
    chunks = list(c.chat.completions.create(model="nano4", messages=MSGS, max_tokens=5, stream=True,
                                            stream_options={"include_usage": True}))
    seen.append(chunks[-1].usage)
    # committed before the stream's last chunks: there the moment the client has read [DONE]
    assert server["db"].execute("SELECT COUNT(*) FROM usage WHERE request_id = ?", (chunks[0].id,)).fetchone()[0] == 1
    [(key_id, name, model, day, n, p, c_, cost)] = usage.summary(server["db"], key_id=k.id)
    assert (key_id, model, n) == (k.id, "nano4-20261201", 4) and day == dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    assert p == sum(u.prompt_tokens for u in seen) and c_ == sum(u.completion_tokens for u in seen)
    assert cost == pytest.approx((p * 0.03 + c_ * 0.06) / 1000)
    cli(["usage", "--home", str(server["home"]), "--key", str(k.id)])
    out = capsys.readouterr().out
    assert "nano4-20261201" in out and f"{p:,}" in out and "total" in out
    with pytest.raises(Exception, match="not a date"):
        cli(["usage", "--home", str(server["home"]), "--since", "yesterday"])


def test_abuse_monitoring_records_flags_and_suspends_a_key(server):
    c, k = new_key(server)
    bad = [{"role": "user", "content": "FLAGME now"}]
    for messages in (MSGS, MSGS, bad, bad):  # 2 of 4 flagged: the threshold (0.5 of at least 4 requests)
        c.chat.completions.create(model="nano4", messages=messages, max_tokens=2)
    with pytest.raises(openai.PermissionDeniedError) as e:
        c.chat.completions.create(model="nano4", messages=MSGS, max_tokens=2)
    assert e.value.body["code"] == "key_suspended" and "2 of 4 requests flagged" in e.value.body["message"]
    rows = server["db"].execute("SELECT direction, sha256, categories, text FROM flagged WHERE key_id = ?",
                                (k.id,)).fetchall()
    assert rows == [("request", hashlib.sha256(b"FLAGME now").hexdigest(), "harassment,violence", None)] * 2
    keys.reinstate(server["db"], k.id)
    assert c.chat.completions.create(model="nano4", messages=MSGS, max_tokens=2).choices


def test_moderations_endpoint(client):
    r = client.moderations.create(input=["a calm sentence", "FLAGME"])
    assert r.model == "marker-moderation" and r.id.startswith("modr-")
    assert [x.flagged for x in r.results] == [False, True] and r.results[1].categories.violence
    with pytest.raises(openai.BadRequestError) as e:
        client.moderations.create(input=[])
    assert e.value.body["param"] == "input"


def test_chat_page_cap_counts_only_the_pages_messages(server):
    c, _ = new_key(server)
    page = {"X-Nanogpt4-Client": "chat-page"}
    for _ in range(2):
        c.chat.completions.create(model="nano4", messages=MSGS, max_tokens=2, extra_headers=page)
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(model="nano4", messages=MSGS, max_tokens=2, extra_headers=page)
    assert e.value.body["code"] == "usage_cap_reached" and "2 messages every 1 hours" in e.value.body["message"]
    assert c.chat.completions.create(model="nano4", messages=MSGS, max_tokens=2).choices  # the API is not capped


def test_metrics_and_health(server, client):
    client.chat.completions.create(model="nano4", messages=MSGS, max_tokens=3)
    with urllib.request.urlopen(server["url"] + "/metrics", timeout=10) as r:
        text = r.read().decode()
    assert 'nanogpt4_requests_total{endpoint="/v1/chat/completions",status="200"}' in text
    assert 'nanogpt4_queue_depth{model="nano4-20261201"} 0.0' in text and "nanogpt4_batch_size{" in text
    assert 'nanogpt4_tokens_total{kind="completion",model="nano4-20261201"}' in text
    assert "nanogpt4_request_seconds_bucket{" in text and "nanogpt4_time_to_first_token_seconds_count{" in text
    assert 'nanogpt4_decode_steps_total{model="nano4-20261201"}' in text
    with urllib.request.urlopen(server["url"] + "/health", timeout=10) as r:
        health = json.loads(r.read())
    assert health["auth"] is True and health["chat_cap"] == {"messages": 2, "hours": 1.0}


def test_overload_gets_503_and_charges_nothing(server):
    from fastapi.testclient import TestClient
    cap = limits.ChatCap(5, 1.0)
    app = api.create_app(server["models"], server["served"], server["db"], max_queue=0, chat_cap=cap)
    key, k = keys.create(server["db"], "busy", rpm=5, tpm=100_000)
    with TestClient(app) as tc:
        for _ in range(7):  # more than the key's 5 RPM and the cap's 5 messages: a 503 charges neither
            r = tc.post("/v1/chat/completions", json=dict(model="nano4", messages=MSGS, max_tokens=2),
                        headers={"Authorization": f"Bearer {key}", "X-Nanogpt4-Client": "chat-page"})
            assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded"
            assert r.headers["retry-after"] == "1"
    assert not cap.inflight


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run, home, port):
    proc = subprocess.Popen([sys.executable, "-m", "nanogpt4.cli", "serve", "--run", str(run), "--home", str(home),
                             "--port", str(port), "--no-moderation", "--max-rows", "8"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except OSError:
            assert proc.poll() is None, "the server exited"
            time.sleep(0.2)
    proc.kill()
    raise TimeoutError("server did not start")


@pytest.mark.slow
def test_sigkill_mid_traffic_loses_no_completed_usage(local_run, tmp_path):
    home = tmp_path / "home"
    db = state.connect(state.home(home))
    key, _ = keys.create(db, "load", rpm=100_000, tpm=100_000_000)
    port = free_port()
    proc = start_server(local_run, home, port)
    c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, timeout=20, max_retries=0)
    done, lock, stop = {}, threading.Lock(), threading.Event()

    def worker(i):
        while not stop.is_set():
            try:
                if i % 2:
                    r = c.chat.completions.create(model="nano4", messages=MSGS, max_tokens=20, seed=i)
                    rid, u = r.id, r.usage
                else:
                    chunks = list(c.chat.completions.create(model="nano4", messages=MSGS, max_tokens=20, stream=True,
                                                            stream_options={"include_usage": True}))
                    rid, u = chunks[0].id, chunks[-1].usage
            except Exception:  # noqa: BLE001 — the server was killed under us
                return
            with lock:
                done[rid] = (u.prompt_tokens, u.completion_tokens)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(6)]
    for t in threads:
        t.start()
    deadline = time.time() + 60
    while len(done) < 30 and time.time() < deadline:
        time.sleep(0.01)
    proc.kill()  # SIGKILL, requests in flight
    proc.wait(10)
    stop.set()
    for t in threads:
        t.join(30)
    with lock:
        completed = dict(done)
    assert len(completed) >= 30
    db = state.connect(home)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = dict((r[0], (r[1], r[2])) for r in db.execute("SELECT request_id, prompt_tokens, completion_tokens FROM usage"))
    assert {rid: rows.get(rid) for rid in completed} == completed  # every completed request, exactly as answered
    proc = start_server(local_run, home, port)  # restarts on the same database and meters on
    try:
        before = db.execute("SELECT COUNT(*) FROM usage").fetchone()[0]
        c.chat.completions.create(model="nano4", messages=MSGS, max_tokens=2)
        assert db.execute("SELECT COUNT(*) FROM usage").fetchone()[0] == before + 1
    finally:
        proc.terminate()
        proc.wait(20)


def test_smoke_test_starts_checks_and_stops(local_run, tmp_path):
    out = tmp_path / "smoke.json"
    before = set(threading.enumerate())
    result = cli(["serve", "--run", str(local_run), "--smoke", str(out), "--no-moderation"])
    r = json.loads(out.read_text())
    assert result == 0 and r["passed"], r
    assert set(r["checks"]) == {"models", "chat", "stream", "completion", "bad key", "usage metered", "metrics"}
    assert r["ttft_s"] > 0 and r["decode_tok_s"] > 0
    assert not [t for t in set(threading.enumerate()) - before if t.name.startswith("serve-")]  # engines stopped


def test_responses_validate_against_the_clients_own_types(client):
    from openai.types import Completion, Model
    from openai.types.chat import ChatCompletion, ChatCompletionChunk
    raw = client.chat.completions.with_raw_response.create(model="nano4", messages=MSGS, max_tokens=4, n=2,
                                                          logprobs=True, top_logprobs=2)
    ChatCompletion.model_validate(raw.http_response.json(), strict=True)
    raw = client.completions.with_raw_response.create(model="nano4", prompt="The cat", max_tokens=4, logprobs=1)
    Completion.model_validate(raw.http_response.json(), strict=True)
    raw = client.models.with_raw_response.retrieve("nano4")
    Model.model_validate(raw.http_response.json(), strict=True)
    with client.chat.completions.with_streaming_response.create(
            model="nano4", messages=MSGS, max_tokens=4, stream=True, stream_options={"include_usage": True}) as r:
        lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]" and len(lines) >= 4
    for line in lines[:-1]:
        ChatCompletionChunk.model_validate(json.loads(line), strict=True)


@pytest.mark.network
def test_moderations_with_the_trained_classifier(server):
    from fastapi.testclient import TestClient
    from openai.types import ModerationCreateResponse
    from nanogpt4.serve import moderation
    moderator = moderation.load()
    app = api.create_app(server["models"], server["served"], server["db"], auth=False, moderator=moderator)
    with TestClient(app) as tc:
        r = tc.post("/v1/moderations", json={"input": ["What a lovely day for a walk by the sea.", "Hello!"]})
        bad = tc.post("/v1/moderations", json={"input": 7})
    got = ModerationCreateResponse.model_validate(r.json(), strict=True)
    assert got.model == moderator.name and [x.flagged for x in got.results] == [False, False]
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "input"


def test_server_errors_leak_nothing_and_cost_nothing(client, server, monkeypatch):
    eng = server["served"]["nano4-20261201"].engine

    def broken(reqs):
        raise RuntimeError("/secret/path: internal detail")
    monkeypatch.setattr(eng, "_prefill", broken)
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.with_raw_response.create(model="nano4", messages=MSGS, max_tokens=3)
    assert e.value.status_code == 500 and e.value.body["type"] == "server_error"
    assert "secret" not in json.dumps(e.value.body)
    with client.chat.completions.with_streaming_response.create(model="nano4", messages=MSGS, max_tokens=3,
                                                                stream=True) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert '"server_error"' in lines[-1] and "secret" not in "".join(lines) and "[DONE]" not in lines[-1]
    rid = json.loads(lines[0][6:])["id"]
    assert usage_row(server, rid)[0] == "error"
    assert server["db"].execute("SELECT cost FROM usage WHERE request_id = ?", (rid,)).fetchone()[0] == 0.0


def test_models_file_written_for_runs(local_run, endless_run, tmp_path):
    written = M.write(tmp_path / "models.yaml", {"nano4-sft": local_run, "nano4": endless_run}, {"nano4": "nano4"},
                      today=dt.date(2026, 12, 2))
    loaded = M.load(tmp_path / "models.yaml")
    assert loaded.names() == written.names() == ["nano4-20261202", "nano4-sft-20261202", "nano4"]
    assert loaded.resolve("nano4").run == endless_run.resolve()
    assert loaded.resolve("nano4-sft-20261202").checkpoint_sha256 == runs.checkpoint_id(local_run).split(":")[1]
    served = api.load(loaded, device="cpu", max_rows=2)  # every snapshot's pinned checkpoint loads
    for s in served.values():
        s.close()
