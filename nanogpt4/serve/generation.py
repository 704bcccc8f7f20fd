"""One generation request through the server, from admission to its usage row.

A request is admitted (the context, `n`, the chat page's cap, the queue bound, then the key's RPM/TPM: a request
refused anywhere is charged nothing), runs on its snapshot's engine, is answered whole or as SSE chunks, and is
metered exactly once: its usage row and whatever moderation flags, in one transaction, committed before the
response completes, whether it finished, failed (no cost), or its client left — also before its stream began.
Waiting for tokens holds no thread: the engine wakes the event loop (`Listener`).
"""
import asyncio
import contextlib
import json
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Optional

from starlette.responses import JSONResponse, StreamingResponse

from . import keys, usage
from .errors import APIError, error_body
from ..engine import Cancelled, ContextLengthError, SamplingParams

CHAT_PAGE = "chat-page"  # the X-Nanogpt4-Client header of the chat page's requests: they count against its cap


def completion_tokens(out, stop_ids):
    return sum(sum(t not in stop_ids for t in c.token_ids) for c in out.choices)


def usage_of(out, stop_ids):
    n = completion_tokens(out, stop_ids)
    return {"prompt_tokens": out.prompt_tokens, "completion_tokens": n, "total_tokens": out.prompt_tokens + n}


def sse(obj):
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


class Listener:
    """Wakes the event loop when an engine request has news (the engine calls `wake` on its thread), so waiting
    for tokens holds no thread: a thread blocked per stream would exhaust asyncio's small default pool."""

    def __init__(self, eng):
        self.loop, self.event, self.scheduled = asyncio.get_running_loop(), asyncio.Event(), False
        eng.listener = self.wake

    def wake(self):
        if not self.scheduled:  # one wake-up in flight is enough: it runs after every push made so far
            self.scheduled = True
            self.loop.call_soon_threadsafe(self._set)

    def _set(self):
        self.scheduled = False
        self.event.set()


async def batches(eng):
    """Lists of an engine request's stream items as they come, everything waiting taken at once (so a busy loop
    sends fewer, larger deltas); the last list ends with None."""
    listener = Listener(eng)
    while True:
        listener.event.clear()
        items = []
        while True:
            try:
                items.append(eng.stream.get_nowait())
            except queue.Empty:
                break
        if items:
            yield items
            if items[-1] is None:
                return
        else:
            await listener.event.wait()


@dataclass
class Call:
    """One admitted generation request: who asked, from where, on which snapshot, its input text (for moderation)
    and its engine request."""
    id: str
    key: Optional[keys.Key]
    user: str  # whom the chat page's cap counts
    client: str  # "api" or CHAT_PAGE
    served: object  # api.Served
    text: str
    eng: object = None
    capped: bool = False  # holds a slot of the chat page's cap until metered
    metered: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class MeteredStream(StreamingResponse):
    """An SSE response that, however it ends (finished, the client gone, even before the first chunk), cancels
    its engine request and has it metered, without blocking the event loop."""

    def __init__(self, content, gate, call, headers):
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self.gate, self.call = gate, call

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self.call.eng.done.is_set():
                self.call.eng.cancel()
            if not self.call.metered:  # handed off, not awaited: this task may be being cancelled
                asyncio.get_running_loop().run_in_executor(None, self.gate.meter_when_done, self.call)


class Gate:
    """Admits, answers and meters the generation requests of one app (see the module docstring)."""

    def __init__(self, db, reader, limiter, meters, chat_cap, monitor=None, max_queue=256):
        self.db, self.reader, self.limiter, self.meters = db, reader, limiter, meters
        self.chat_cap, self.monitor, self.max_queue = chat_cap, monitor, max_queue

    async def admit(self, request, key, s, ids, req, stops, param, text, prefix, **extra):
        """Check, charge and submit a generation; returns (Call, rate-limit headers)."""
        room = req.max_tokens or getattr(req, "max_completion_tokens", None)
        params = SamplingParams(max_tokens=room, temperature=req.temperature, top_p=req.top_p, top_k=req.top_k,
                                stop=tuple(stops), seed=req.seed, n=req.n, **extra)
        if req.n > s.engine.max_rows:
            raise APIError(400, f"n={req.n} is more than this server decodes at once ({s.engine.max_rows}).",
                           param="n")
        try:
            s.engine.check(ids, params)
        except ContextLengthError as e:
            raise APIError(400, str(e), param=param, code="context_length_exceeded") from None
        except ValueError as e:
            raise APIError(400, str(e), param=param) from None
        client = CHAT_PAGE if request.headers.get("x-nanogpt4-client") == CHAT_PAGE else "api"
        call = Call(f"{prefix}-{uuid.uuid4().hex}", key, str(key.id) if key else request.client.host, client, s, text)
        if client == CHAT_PAGE:
            await asyncio.to_thread(self.chat_cap.admit, self.reader, call.user)
            call.capped = True
        try:
            if len(s.engine.pending) >= self.max_queue:
                raise APIError(503, "The server is overloaded with requests; please retry shortly.", "server_error",
                               code="overloaded", headers={"retry-after": "1"})
            tokens = len(ids) + (room or s.engine.n_ctx - len(ids)) * req.n  # max_tokens counts up front
            headers = self.limiter.take(key, tokens, s.snapshot.name) if key else {}
            try:
                call.eng = s.engine.submit(ids, params)
            except RuntimeError:  # the engine is closing
                raise APIError(503, "The model is shutting down; please retry.", "server_error") from None
            return call, headers
        except BaseException:
            if call.capped:
                self.chat_cap.done(call.user)
            raise

    def meter_when_done(self, call, timeout=60):
        """Meter a cancelled call once the engine has let it go: what it generated up to then."""
        call.eng.done.wait(timeout)
        self.meter(call)

    def meter(self, call):
        """Once per request, from any thread: its usage row and the texts moderation flags, in one transaction
        (the chat cap's slot released under the cap's lock with it), then the metrics."""
        with call.lock:
            if call.metered:
                return
            call.metered = True
        eng, s = call.eng, call.served
        out, n = eng.out, completion_tokens(eng.out, s.engine.stop_ids)
        finish = "error" if eng.error is not None and not isinstance(eng.error, Cancelled) else \
            "cancelled" if eng.cancelled else (out.choices[0].finish_reason or "cancelled")
        key_id = call.key.id if call.key else None
        with self.chat_cap.lock if call.capped else contextlib.nullcontext():
            try:
                flagged = self.monitor.review(call.text, [c.text for c in out.choices]) if self.monitor else []
                with self.db.transaction():
                    usage.record(self.db, call.id, key_id, call.user, call.client, s.snapshot, out.prompt_tokens, n,
                                 finish)
                    if self.monitor:
                        self.monitor.record(self.db, call.id, key_id, flagged)
            finally:
                if call.capped:
                    self.chat_cap.done(call.user)
        times = out.choices[0].times
        self.meters.generation(s.snapshot.name, out.prompt_tokens, n, times[0] - eng.submitted if times else None)

    async def respond(self, call, headers, stream, include_usage, kind, answer):
        """The response of an admitted call: SSE chunks of `kind`, or (not streaming) `answer(out)`'s choices once
        it is done and metered, with the usage."""
        s = call.served
        head = dict(id=call.id, created=int(time.time()), model=s.snapshot.name, system_fingerprint=s.fingerprint)
        if stream:
            chunk_kind = "chat.completion.chunk" if kind == "chat.completion" else kind
            return MeteredStream(self.chunks(call, head, chunk_kind, include_usage), self, call, headers)
        try:
            async for _ in batches(call.eng):
                pass
        except BaseException:  # the client left
            call.eng.cancel()
            asyncio.get_running_loop().run_in_executor(None, self.meter_when_done, call)
            raise
        await asyncio.to_thread(self.meter, call)
        out = call.eng.result()  # an engine error raises here: a 500
        return JSONResponse(dict(head, object=kind, choices=answer(out), usage=usage_of(out, s.engine.stop_ids)),
                            headers=headers)

    async def chunks(self, call, head, kind, include_usage):
        """SSE chunks: (chat) a role delta per choice first, then text deltas as they become final, one chunk per
        choice with its finish_reason, the usage chunk if asked, then [DONE]; the usage is committed before
        those last two."""
        eng, is_chat = call.eng, kind == "chat.completion.chunk"

        def chunk(index, text=None, finish=None, role=False):
            if is_chat:
                delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
                choice = dict(index=index, delta=delta, logprobs=None, finish_reason=finish)
            else:
                choice = dict(index=index, text=text or "", logprobs=None, finish_reason=finish)
            return sse(dict(head, object=kind, choices=[choice]))

        if is_chat:
            for i in range(eng.params.n):
                yield chunk(i, role=True)
        async for items in batches(eng):
            deltas = {}  # choice index → its text, in order
            for item in items:
                if item is not None:
                    deltas[item[0]] = deltas.get(item[0], "") + item[1]
            for index, text in deltas.items():
                yield chunk(index, text)
        await asyncio.to_thread(self.meter, call)
        if eng.error is not None:
            yield sse(error_body("The server had an error while processing your request.", "server_error"))
            return
        for c in eng.out.choices:
            yield chunk(c.index, finish=c.finish_reason)
        if include_usage:
            yield sse(dict(head, object=kind, choices=[], usage=usage_of(eng.out, call.served.engine.stop_ids)))
        yield "data: [DONE]\n\n"
