"""The OpenAI-compatible API over the engine (FastAPI): `POST /v1/chat/completions` (plain and SSE streaming),
`POST /v1/completions`, `POST /v1/moderations`, `GET /v1/models`, `GET /v1/models/{id}`, `GET /health`,
`GET /metrics` (Prometheus), and the chat page at `/` (files in serve/web/).

Each served snapshot has its own engine, loaded and run on one thread of its own (all of a model's compute on
the thread that loaded it: the fast path on CPU, NOTES.md). Requests are validated into pydantic models (strict
types; unknown fields ignored as OpenAI does, unsupported ones refused by name), rendered with the chat format
(chat.py), checked against the context before any work, and every error has OpenAI's body
`{"error": {"message", "type", "param", "code"}}` and status. Usage counts the prompt's tokens and the sampled
ones (a closing stop token excluded).

A generation request passes its key (401 missing/bad, 403 revoked or suspended; keys.py), its body (413, 400)
and its model (404) here; generation.py admits it (the context, the chat page's cap, the queue bound: 503, the
key's RPM/TPM: 429 with `retry-after` and the `x-ratelimit-*` headers, limits.py), answers it and meters it
(usage.py, monitor.py) before its response completes.
"""
import asyncio
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Optional, Union

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException

from .. import chat, runs
from ..common import UserError
from . import db as state, keys, limits, metrics
from .errors import APIError, error_body
from .generation import Gate
from ..engine import Engine, prompt_ids
from ..model import vision

MAX_BODY = 8 << 20  # bytes; a larger request is refused with 413 (see read_json)
MAX_MODERATION_INPUTS = 256
WEB = Path(__file__).parent / "web"
NO_OPS = {"response_format": {"type": "text"}, "tool_choice": "none"}  # defaults some tools send: as if absent
UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "response_format", "logit_bias", "audio",
               "modalities", "prediction", "suffix", "best_of")


# ----------------------------------------------------------------------------- requests

class Sampling(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    model: str
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)  # an extension (as vLLM and llama.cpp offer)
    n: int = Field(1, ge=1, le=16)
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None
    stream: bool = False
    stream_options: Optional[dict] = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    user: Optional[str] = None


class ChatRequest(Sampling):
    messages: list
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)


class CompletionRequest(Sampling):
    prompt: Union[str, list[str]]
    logprobs: Optional[int] = Field(None, ge=0, le=5)
    echo: bool = False


class ModerationRequest(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    input: Union[str, list[str]]
    model: Optional[str] = None


def parse(cls, body):
    """A validated request and its stop strings, or the APIError OpenAI would give for it."""
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.")
    for name in UNSUPPORTED:
        if body.get(name) not in (None, False, [], {}, NO_OPS.get(name)):
            raise APIError(400, f"'{name}' is not supported by this server.", param=name, code="unsupported_parameter")
    try:
        req = cls.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        param = str(err["loc"][0]) if err["loc"] else None  # the request's field (not pydantic's union branch)
        raise APIError(400, f"Invalid value for '{param}': {err['msg']}.", param=param, code="invalid_value") from None
    stop = getattr(req, "stop", None)
    stops = [stop] if isinstance(stop, str) else (stop or [])
    if len(stops) > 4 or any(not s for s in stops):
        raise APIError(400, "'stop' takes up to 4 non-empty strings.", param="stop")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name, 0):
            raise APIError(400, f"'{name}' other than 0 is not supported by this server.", param=name,
                           code="unsupported_parameter")
    if getattr(req, "top_logprobs", None) is not None and not req.logprobs:
        raise APIError(400, "'top_logprobs' needs 'logprobs' set to true.", param="top_logprobs")
    if getattr(req, "stream_options", None) is not None and not req.stream:
        raise APIError(400, "'stream_options' is only allowed when 'stream' is true.", param="stream_options")
    if getattr(req, "stream", False) and getattr(req, "logprobs", None):
        raise APIError(400, "logprobs with stream is not supported by this server yet.", param="logprobs")
    return req, stops


# ----------------------------------------------------------------------------- models

class Served:
    """One snapshot: its model loaded and its engine looping on a thread of their own."""

    def __init__(self, snapshot, device=None, dtype=None, compile=False, max_rows=32):
        self.snapshot, self.error = snapshot, None
        ready = threading.Event()

        def run():
            try:
                r = runs.load(snapshot.run, device, dtype, sha256=snapshot.checkpoint_sha256)
                self.tok, self.fingerprint = r.tok, "fp_" + r.checkpoint_id.split(":")[1][:10]
                self.vision = r.vision  # the image encoder of a vision model, else None
                self.engine = Engine(r.model, r.tok, max_rows=max_rows, compile=compile)
                if snapshot.context_length:
                    self.engine.n_ctx = min(snapshot.context_length, self.engine.n_ctx)
            except Exception as e:  # noqa: BLE001 — reported to the starting thread
                self.error = e
                return
            finally:
                ready.set()
            self.engine.serve()  # until the engine is closed

        self.thread = threading.Thread(target=run, name=f"serve-{snapshot.name}", daemon=True)
        self.thread.start()
        ready.wait()
        if self.error is not None:
            raise self.error

    def close(self, timeout=10.0):
        self.engine.close(timeout)  # joins this thread's loop, then cancels what is left


def model_card(snapshot, name=None):
    return {"id": name or snapshot.name, "object": "model", "created": snapshot.created, "owned_by": "nanogpt4"}


# ----------------------------------------------------------------------------- responses

def token_logprob(tok, t, lp):
    b = tok.enc.decode_single_token_bytes(t)
    return {"token": b.decode("utf-8", "replace"), "logprob": lp, "bytes": list(b)}


def chat_logprobs(tok, c, stop_ids):
    out = []
    for i, (t, lp) in enumerate(zip(c.token_ids, c.logprobs)):
        if t in stop_ids:
            continue
        top = c.top_logprobs[i] if i < len(c.top_logprobs) else {}
        out.append(dict(token_logprob(tok, t, lp), top_logprobs=[token_logprob(tok, a, b) for a, b in top.items()]))
    return {"content": out}


# ----------------------------------------------------------------------------- the app

def include_usage(req):
    return bool((req.stream_options or {}).get("include_usage"))


def input_text(messages):
    """The text a chat request sends (system and user turns), as moderation reads it."""
    return "\n".join(chat.text_of(m["content"]) for m in messages if m["role"] in ("system", "user"))


MAX_IMAGES = 8  # image parts per request (each also costs its tokens of the context)


def render_chat(s, model, messages):
    """(the rendering, image embeddings or None) of a chat request: a vision model sees its images (data URLs
    only: the server has no network; each costs its placeholders and tile markers, billed as prompt tokens), any
    other model refuses them; a 400 names what is wrong with which image."""
    n = sum(p.get("type") == "image_url" for m in messages if isinstance(m["content"], list) for p in m["content"])
    if n and s.vision is None:
        raise APIError(400, f"The model `{model}` does not accept image input.", param="messages",
                       code="image_input_not_supported")
    if n > MAX_IMAGES:
        raise APIError(400, f"{n} images in one request; at most {MAX_IMAGES} are accepted.",
                       param="messages", code="too_many_images")
    if not n:
        return chat.render(s.tok, messages), None
    try:
        rendered, views = vision.render(s.tok, messages, s.vision.cfg)
    except vision.ImageError as e:
        raise APIError(400, f"{str(e)[0].upper()}{str(e)[1:]}.", param="messages", code="invalid_image") from None
    return rendered, s.vision.embed_views(views)


def create_app(models, served, db, auth=True, moderator=None, monitor=None, chat_cap=None, max_queue=256):
    """The FastAPI app for `models` (serve.models.Models) whose snapshots are loaded in `served` (name → Served),
    keeping its state in `db` (serve.db.connect). With `auth` every /v1 request needs a valid key. `moderator`
    (serve.moderation) answers /v1/moderations and `monitor` (serve.monitor) reviews every generation;
    `chat_cap` (limits.ChatCap) caps the chat page's messages per user; at `max_queue` requests waiting for an
    engine, more get 503."""
    app = FastAPI(title="nanogpt4", docs_url=None, redoc_url=None, openapi_url=None)
    limiter, meters, reader = limits.Limiter(), metrics.Metrics(served), state.reader(db)
    chat_cap = chat_cap or limits.ChatCap(0)
    gate = Gate(db, reader, limiter, meters, chat_cap, monitor, max_queue)
    app.add_middleware(metrics.Observe, metrics=meters)

    def authorize(request):
        if not auth:
            return None
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer ") or not header[7:].strip():
            raise APIError(401, "You didn't provide an API key. Provide it in an Authorization header "
                                "(Authorization: Bearer YOUR_KEY).", code="missing_api_key")
        key = keys.check(reader, header[7:].strip())
        if key is None:
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
        if key.revoked:
            raise APIError(403, "This API key has been revoked.", code="revoked_api_key")
        if key.suspended:
            raise APIError(403, f"This API key has been suspended by abuse monitoring ({key.suspended_reason}). "
                                f"Contact the server's operator.", code="key_suspended")
        return key

    @app.exception_handler(APIError)
    async def api_error(request, e):
        return JSONResponse(error_body(e.message, e.type, e.param, e.code), status_code=e.status, headers=e.headers)

    @app.exception_handler(limits.RateLimited)
    async def rate_limited(request, e):
        return JSONResponse(error_body(e.message, e.type, None, e.code), status_code=429, headers=e.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request, e):
        kind = "invalid_request_error" if e.status_code < 500 else "server_error"
        msg = f"Unknown request URL: {request.method} {request.url.path}." if e.status_code == 404 else str(e.detail)
        return JSONResponse(error_body(msg, kind, code="unknown_url" if e.status_code == 404 else None),
                            status_code=e.status_code)

    @app.exception_handler(Exception)
    async def server_error(request, e):  # never leak internals
        return JSONResponse(error_body("The server had an error while processing your request.", "server_error"),
                            status_code=500)

    async def read_json(request):
        """The body as JSON; over MAX_BODY it is read to its end (up to 8×, so that the client gets to read the
        413 instead of a reset connection) and discarded."""
        body, seen = bytearray(), 0
        async for part in request.stream():
            seen += len(part)
            if seen <= MAX_BODY:
                body += part
            elif seen > 8 * MAX_BODY:
                break
        if seen > MAX_BODY:
            raise APIError(413, f"Request body too large: the limit is {MAX_BODY} bytes.", code="request_too_large")
        try:
            return json.loads(bytes(body).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise APIError(400, f"We could not parse the JSON body of your request ({e}).") from None

    def lookup(name):
        snap = models.resolve(name)
        if snap is None or snap.name not in served:
            raise APIError(404, f"The model `{name}` does not exist.", param="model", code="model_not_found")
        if snap.deprecated():
            raise APIError(404, f"The model `{name}` was deprecated after {snap.deprecated_after.isoformat()}; "
                                f"use a newer snapshot (GET /v1/models).", param="model", code="model_deprecated")
        return served[snap.name]

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": sorted(served), "auth": auth,
                "chat_cap": {"messages": chat_cap.messages, "hours": chat_cap.seconds / 3600}}

    @app.get("/metrics")
    async def prometheus():
        body, kind = meters.text()
        return Response(body, media_type=kind)

    @app.get("/")
    async def page():
        return FileResponse(WEB / "index.html")

    app.mount("/web", StaticFiles(directory=WEB, check_dir=False), name="web")

    @app.get("/v1/models")
    async def list_models(request: Request):
        authorize(request)
        live = [n for n in sorted(served) if not models.snapshots[n].deprecated()]
        cards = [model_card(models.snapshots[n]) for n in live]
        cards += [model_card(models.snapshots[t], a) for a, t in sorted(models.aliases.items()) if t in live]
        return {"object": "list", "data": cards}

    @app.get("/v1/models/{name}")
    async def get_model(name: str, request: Request):
        authorize(request)
        lookup(name)
        return model_card(models.resolve(name), name)

    @app.post("/v1/moderations")
    async def moderations(request: Request):
        key = authorize(request)
        req, _ = parse(ModerationRequest, await read_json(request))
        texts = [req.input] if isinstance(req.input, str) else req.input
        if not texts or len(texts) > MAX_MODERATION_INPUTS:
            raise APIError(400, f"'input' takes 1 to {MAX_MODERATION_INPUTS} strings.", param="input")
        if moderator is None:
            raise APIError(503, "Moderation is not enabled on this server.", "server_error")
        headers = limiter.take(key, 0, moderator.name) if key else {}
        results = await asyncio.to_thread(moderator.classify, texts)
        return JSONResponse({"id": f"modr-{uuid.uuid4().hex}", "model": moderator.name, "results": results},
                            headers=headers)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        key = authorize(request)
        req, stops = parse(ChatRequest, await read_json(request))
        s = lookup(req.model)
        try:
            chat.validate(req.messages)
        except chat.ChatError as e:
            raise APIError(400, str(e), param="messages") from None
        rendered, images = await asyncio.to_thread(render_chat, s, req.model, req.messages)
        call, headers = await gate.admit(request, key, s, rendered.ids, req, stops, "messages",
                                         input_text(req.messages), "chatcmpl", images=images,
                                         top_logprobs=req.top_logprobs or 0)

        def answer(out):
            return [dict(index=c.index, message=dict(role="assistant", content=c.text),
                         logprobs=chat_logprobs(s.tok, c, s.engine.stop_ids) if req.logprobs else None,
                         finish_reason=c.finish_reason) for c in out.choices]
        return await gate.respond(call, headers, req.stream, include_usage(req), "chat.completion", answer)

    @app.post("/v1/completions")
    async def completions(request: Request):
        key = authorize(request)
        req, stops = parse(CompletionRequest, await read_json(request))
        s = lookup(req.model)
        prompt = req.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise APIError(400, "This server takes one prompt per request.", param="prompt")
            prompt = prompt[0]
        if req.echo:
            raise APIError(400, "'echo' is not supported by this server.", param="echo", code="unsupported_parameter")
        ids, _ = prompt_ids(s.tok, prompt)
        call, headers = await gate.admit(request, key, s, ids, req, stops, "prompt", prompt, "cmpl",
                                         top_logprobs=req.logprobs or 0)

        def answer(out):
            return [dict(index=c.index, text=c.text, finish_reason=c.finish_reason,
                         logprobs=completion_logprobs(s, c) if req.logprobs is not None else None)
                    for c in out.choices]
        return await gate.respond(call, headers, req.stream, include_usage(req), "text_completion", answer)

    return app


def completion_logprobs(s, c):
    """The text-completions logprobs object of one choice (stop tokens left out)."""
    keep = [i for i, t in enumerate(c.token_ids) if t not in s.engine.stop_ids]
    toks = [s.tok.enc.decode_single_token_bytes(c.token_ids[i]).decode("utf-8", "replace") for i in keep]
    offsets = [sum(map(len, toks[:i])) for i in range(len(toks))]
    top = [{s.tok.decode([a]): b for a, b in c.top_logprobs[i].items()} if c.top_logprobs else None for i in keep]
    return dict(tokens=toks, token_logprobs=[c.logprobs[i] for i in keep], top_logprobs=top, text_offset=offsets)


# ----------------------------------------------------------------------------- CLI

def add_args(p):
    p.add_argument("--home", default=None, help="server state directory, shared with `nanogpt4 keys` and `nanogpt4 "
                                                "usage` (default: $NANOGPT4_HOME or ~/.local/share/nanogpt4)")
    p.add_argument("--no-auth", action="store_true", help="serve without API keys (local development only)")
    p.add_argument("--models", default=None, help="models file (YAML: snapshots, aliases; see serve/models.py)")
    p.add_argument("--run", default="runs/default/pretrain",
                   help="without --models: serve this run's newest checkpoint as nano4-<today> (alias nano4)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, … (default: cuda when present)")
    p.add_argument("--compile", action="store_true",
                   help="compile the engines' decode and prefill (in bf16 where the machine has bf16 arithmetic)")
    p.add_argument("--max-rows", type=int, default=32, help="sequences each engine decodes together (1: no "
                                                            "continuous batching, one request at a time)")
    p.add_argument("--max-queue", type=int, default=256, help="requests waiting per model before new ones get 503")
    p.add_argument("--chat-cap", type=int, default=100, help="chat page: messages per user per window (0: no cap; "
                                                             "ChatGPT Plus had 100 every 4 hours at GPT-4's launch)")
    p.add_argument("--chat-cap-hours", type=float, default=4.0, help="chat page: the cap's window in hours")
    p.add_argument("--no-moderation", action="store_true", help="no /v1/moderations and no abuse monitoring")
    p.add_argument("--keep-flagged-text", action="store_true", help="abuse monitoring keeps flagged texts, not "
                                                                    "only their sha256 and categories")
    p.add_argument("--suspend-flagged-rate", type=float, default=0.5,
                   help="suspend a key when this share of its requests in a day is flagged (0: never)")
    p.add_argument("--suspend-min-requests", type=int, default=20, help="… once it has made this many")
    p.add_argument("--smoke", default=None, metavar="OUT.json",
                   help="start, run the smoke test through the openai client (serve/smoke.py), write OUT.json, stop "
                        "(state in a temporary --home unless one is given)")


def load(models, device=None, compile=False, max_rows=32):
    """Load every snapshot, each on its own thread (refusing one whose checkpoint hash changed): name → Served."""
    import torch
    from ..perf import fast_dtype
    dtype = getattr(torch, fast_dtype(device or "cpu")) if compile else None  # float32 where bf16 is emulated
    return {name: Served(snap, device, dtype, compile, max_rows) for name, snap in models.snapshots.items()}


def main(args):
    import tempfile
    from . import models as snapshots, moderation, monitor
    models = snapshots.load(args.models) if args.models else snapshots.for_run(args.run)
    scratch = tempfile.TemporaryDirectory() if args.smoke and not args.home else None
    home = state.home(scratch.name if scratch else args.home)
    db = state.connect(home)
    if not args.no_auth and not keys.all_keys(db) and not args.smoke:
        print(f"no API keys yet in {home}: make one with `nanogpt4 keys create` (or --no-auth)")
    moderator = None if args.no_moderation else moderation.load()
    watch = moderator and monitor.Monitor(moderator, args.keep_flagged_text, args.suspend_flagged_rate,
                                          args.suspend_min_requests)
    t0 = time.perf_counter()
    served = load(models, args.device, args.compile, args.max_rows)
    app = create_app(models, served, db, not args.no_auth, moderator, watch,
                     limits.ChatCap(args.chat_cap, args.chat_cap_hours), args.max_queue)
    try:
        if args.smoke:
            return smoke_test(app, db, args, moderator is not None, t0)
        print(f"serving {', '.join(models.names())} on http://{args.host}:{args.port}/v1 (chat page: "
              f"http://{args.host}:{args.port}/)" + (" (no API keys: --no-auth)" if args.no_auth else ""), flush=True)
        import uvicorn
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        for s in served.values():
            s.close()
        if scratch:
            scratch.cleanup()


def in_thread(app, timeout=60):
    """Serve `app` on a free port of 127.0.0.1 from a thread (smoke test, tests); returns (uvicorn.Server, its
    thread, its URL) once it listens. Stop it with `server.should_exit = True` and join the thread."""
    import socket
    import uvicorn
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + timeout
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}"


def smoke_test(app, db, args, moderation, t0):
    """Serve in a thread, run serve/smoke.py against it, stop; returns its result."""
    from . import smoke
    server, thread, url = in_thread(app)
    try:
        key = keys.create(db, "smoke-test")[0] if not args.no_auth else "unused"
        result = smoke.run(url, key, db, moderation)
    finally:
        server.should_exit = True
        thread.join(30)
    result = smoke.write(args.smoke, result, time.perf_counter() - t0)
    if not result["passed"]:
        failed = [name for name, c in result["checks"].items() if not c["passed"]]
        raise UserError(f"serve smoke test failed: {', '.join(failed)} (details in {args.smoke})")
    return result
