"""The serve smoke test of the main job (`nanogpt4 serve --smoke OUT.json`): a running server is exercised through
the official `openai` client — models, a chat completion, a streamed one with its usage chunk, a text completion,
moderation, a bad key, the rate-limit headers, the metered usage and /metrics — and each check's result, the
time to first token and the streamed tokens/s are written to OUT.json for the report card."""
import json
import time
import urllib.request

import openai

from ..common import atomic_write_json
from . import usage

MESSAGES = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "A story, please."}]


def run(url, key, db, moderation=True):
    """{check name: (passed, detail)} plus timings, for a server at `url` (…/v1 is added) with key `key`."""
    client = openai.OpenAI(base_url=url + "/v1", api_key=key, timeout=60, max_retries=0)
    checks, seen, timing = {}, [], {}

    def check(name, fn):
        try:
            checks[name] = (True, fn())
        except Exception as e:  # noqa: BLE001 — a failed check is recorded, the others still run
            checks[name] = (False, f"{type(e).__name__}: {e}"[:300])

    def models():
        ids = [m.id for m in client.models.list().data]
        assert "nano4" in ids, ids
        return ", ".join(ids)

    def chat():
        raw = client.chat.completions.with_raw_response.create(model="nano4", messages=MESSAGES, max_tokens=16,
                                                               temperature=0.8, seed=1)
        r = raw.parse()
        assert raw.headers["x-ratelimit-limit-requests"] and raw.headers["x-ratelimit-remaining-tokens"]
        seen.append(r.usage)
        return f"{r.usage.completion_tokens} tokens, finish {r.choices[0].finish_reason}: {r.choices[0].message.content!r:.60}"

    def stream():
        t0, first, chunks = time.perf_counter(), None, []
        for c in client.chat.completions.create(model="nano4", messages=MESSAGES, max_tokens=24, temperature=0.8,
                                                seed=2, stream=True, stream_options={"include_usage": True}):
            if first is None and c.choices and c.choices[0].delta.content:
                first = time.perf_counter()
            chunks.append(c)
        end, u = time.perf_counter(), chunks[-1].usage
        assert chunks[0].choices[0].delta.role == "assistant" and u is not None and first is not None
        seen.append(u)
        timing.update(ttft_s=round(first - t0, 4), stream_tokens=u.completion_tokens,
                      decode_tok_s=round((u.completion_tokens - 1) / max(end - first, 1e-9), 1))
        return f"{len(chunks)} chunks, {u.completion_tokens} tokens in {end - t0:.2f} s"

    def completion():
        r = client.completions.create(model="nano4", prompt="Once upon a time", max_tokens=16, temperature=0)
        seen.append(r.usage)
        return repr(r.choices[0].text)[:60]

    def moderations():
        r = client.moderations.create(input=["What a lovely day for a walk."])
        return f"{r.model}: flagged={r.results[0].flagged}"

    def bad_key():
        try:
            openai.OpenAI(base_url=url + "/v1", api_key="sk-nano-wrong", max_retries=0).models.list()
        except openai.AuthenticationError as e:
            return f"401 {e.body['code']}"
        raise AssertionError("a wrong key was accepted")

    def metered():
        rows = usage.summary(db)
        p, c = sum(r[5] for r in rows), sum(r[6] for r in rows)
        want = (sum(u.prompt_tokens for u in seen), sum(u.completion_tokens for u in seen))
        assert (p, c) == want, f"metered {(p, c)}, answered {want}"
        return f"{sum(r[4] for r in rows)} requests, {p} + {c} tokens, ${sum(r[7] for r in rows):.4f}"

    def metrics():
        with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
            text = r.read().decode()
        assert "nanogpt4_requests_total" in text and "nanogpt4_queue_depth" in text
        return f"{len(text.splitlines())} lines"

    for name, fn in (("models", models), ("chat", chat), ("stream", stream), ("completion", completion), ("moderation", moderations if moderation else None),
                     ("bad key", bad_key), ("usage metered", metered), ("metrics", metrics)):
        if fn is not None:
            check(name, fn)
    return dict(checks={k: dict(passed=v[0], detail=v[1]) for k, v in checks.items()}, **timing)


def write(path, result, seconds):
    result = dict(result, seconds=round(seconds, 1), passed=all(c["passed"] for c in result["checks"].values()))
    atomic_write_json(path, result)
    print(json.dumps({k: v for k, v in result.items() if k != "checks"}))
    return result
