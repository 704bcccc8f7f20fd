"""The OpenAI-compatible API through the official `openai` client against a tiny checkpoint: chat, streaming, n,
stop, seeds, logprobs, usage counts, models and snapshots, and OpenAI-shaped errors. The server listens on
127.0.0.1 only and stops when the module's tests end."""
import datetime as dt
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest
import uvicorn

from nanogpt4 import runs
from nanogpt4.cli import main as cli
from nanogpt4.serve import api, keys, models as M


@pytest.fixture(scope="module")
def server(local_run, tmp_path_factory):
    sha = runs.checkpoint_id(local_run).split(":")[1]
    models = M.parse({"snapshots": {"nano4-20261201": {"run": str(local_run), "checkpoint_sha256": sha},
                                    "nano4-20250101": {"run": str(local_run), "checkpoint_sha256": sha,
                                                       "deprecated_after": "2025-06-01"}},
                      "aliases": {"nano4": "nano4-20261201"}})
    db = keys.connect(keys.home(tmp_path_factory.mktemp("home")))
    key, _ = keys.create(db, "tests")
    revoked, k = keys.create(db, "old")
    keys.revoke(db, k.id)
    app, served = api.start(models, device="cpu", max_rows=8, db=db)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    yield dict(url=f"http://127.0.0.1:{port}", served=served, key=key, revoked=revoked)
    srv.should_exit = True
    thread.join(10)
    for s in served.values():
        s.close()


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
    assert {"nano4", "nano4-20261201", "nano4-20250101"} <= set(ids)
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
])
def test_bad_requests_get_openai_errors(client, kw, param, code):
    args = dict(model="nano4", messages=MSGS, max_tokens=4)
    args.update(kw)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**args)
    assert e.value.status_code == 400 and e.value.body["param"] == param and e.value.body["code"] == code
    assert e.value.body["type"] == "invalid_request_error" and e.value.body["message"]


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
    try:
        urllib.request.urlopen(url + "/v1/nothing", timeout=10)
    except urllib.error.HTTPError as e:
        assert e.code == 404 and json.loads(e.read())["error"]["code"] == "unknown_url"


def test_a_client_that_leaves_mid_stream_frees_its_rows(client, server):
    eng = server["served"]["nano4-20261201"].engine
    stream = client.chat.completions.create(model="nano4", messages=MSGS, temperature=1.0, seed=1, stream=True)
    next(iter(stream))
    stream.close()  # the client goes away
    deadline = time.time() + 10
    while (eng.rows or eng.pending) and time.time() < deadline:
        time.sleep(0.01)
    assert not eng.rows and not eng.pending


def test_a_snapshot_whose_checkpoint_changed_is_refused(local_run):
    models = M.parse({"snapshots": {"nano4-20261201": {"run": str(local_run), "checkpoint_sha256": "0" * 64}}})
    with pytest.raises(runs.RunError, match="no checkpoint has weights with sha256"):
        api.start(models, device="cpu")


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
    db = keys.connect(tmp_path)
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
    assert keys.home() == tmp_path / "env" and keys.home(tmp_path / "opt") == tmp_path / "opt"
    monkeypatch.delenv("NANOGPT4_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert keys.home() == tmp_path / "xdg" / "nanogpt4"
