"""One generation request through the server, from admission to its usage row.

A request is admitted (the context, `n`, the chat page's cap, the queue bound, then the key's RPM/TPM: a request
refused anywhere is charged nothing), runs on its snapshot's engine, is answered whole or as SSE chunks, and is
metered exactly once: its usage row and whatever moderation flags, in one transaction, committed before the
response completes, whether it finished, failed (no cost), or its client left — also before its stream began.
Waiting for tokens holds no thread: the engine wakes the event loop (`Waker`).
"""
import asyncio
import contextlib
import functools
import json
import queue
import threading
import time
import uuid
import weakref
from concurrent.futures import Future
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


class Waker:
    """Wakes one event loop for engine news: the engine's thread marks the events of the requests that have news,
    and one `call_soon_threadsafe` (a write to the loop's self-pipe) sets all that were marked before it runs, so a
    decode step over 32 streams costs one wake-up, not 32 (profiled: the per-token wake-ups were 10% of the engine
    thread's time at 32 streams)."""
    _of = weakref.WeakKeyDictionary()  # event loop → its Waker

    def __init__(self, loop):
        self.loop, self.lock, self.marked, self.scheduled = loop, threading.Lock(), set(), False

    @classmethod
    def of(cls, loop):
        if loop not in cls._of:
            cls._of[loop] = cls(loop)
        return cls._of[loop]

    def mark(self, event):  # on the engine's thread
        with self.lock:
            self.marked.add(event)
            if self.scheduled:
                return
            self.scheduled = True
        self.loop.call_soon_threadsafe(self._fire)

    def _fire(self):  # on the loop
        with self.lock:
            marked, self.marked, self.scheduled = self.marked, set(), False
        for event in marked:
            event.set()


async def batches(eng):
    """Lists of an engine request's stream items as they come, everything waiting taken at once (so a busy loop
    sends fewer, larger deltas); the last list ends with None. Waiting holds no thread: the engine wakes the loop."""
    event, waker = asyncio.Event(), Waker.of(asyncio.get_running_loop())
    eng.listener = functools.partial(waker.mark, event)
    while True:
        event.clear()
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
            await event.wait()


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
    metered: Optional[Future] = None  # set when it is handed to Metering; done when committed
    lock: threading.Lock = field(default_factory=threading.Lock)


class Metering:
    """One thread that meters ended requests in batches (a group commit): whatever is waiting is classified by
    moderation in one call and written — usage rows, flagged texts, suspensions — in one transaction, the chat
    cap's slots released under the cap's lock with it; then each request's future is done. One thread, not one
    per request: Python threads doing this work beside the engine's thread hold the GIL it needs between kernels
    (profiled at 32 streams: six pool threads metering took ~17% of a core)."""

    def __init__(self, db, meters, chat_cap, monitor=None, batch=64):
        self.db, self.meters, self.chat_cap, self.monitor, self.batch = db, meters, chat_cap, monitor, batch
        self.queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="nanogpt4-metering", daemon=True)
        self.thread.start()

    def submit(self, call):
        """Meter `call` once (later submissions get the same future); returns a Future done when committed."""
        with call.lock:
            if call.metered is None:
                call.metered = Future()
                self.queue.put(call)
            return call.metered

    def _run(self):
        while True:
            calls = [self.queue.get()]
            while len(calls) < self.batch:
                try:
                    calls.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._write(calls)
            except Exception as e:  # noqa: BLE001 — each waiting response gets the error (a 500)
                for c in calls:
                    c.metered.set_exception(e)
                continue
            for c in calls:
                c.metered.set_result(None)

    def _write(self, calls):
        ended = [(c, c.eng.out, completion_tokens(c.eng.out, c.served.engine.stop_ids), finish_of(c.eng))
                 for c in calls]
        capped = [c for c in calls if c.capped]
        with self.chat_cap.lock if capped else contextlib.nullcontext():
            try:
                flagged = self.monitor.review([(c.text, [ch.text for ch in out.choices]) for c, out, _, _ in ended]) \
                    if self.monitor else [[] for _ in calls]
                with self.db.transaction():
                    for (c, out, n, finish), flags in zip(ended, flagged):
                        key_id = c.key.id if c.key else None
                        usage.record(self.db, c.id, key_id, c.user, c.client, c.served.snapshot, out.prompt_tokens, n,
                                     finish)
                        if self.monitor:
                            self.monitor.record(self.db, c.id, key_id, flags)
            finally:
                for c in capped:
                    self.chat_cap.done(c.user)
        for c, out, n, _ in ended:
            times = out.choices[0].times
            self.meters.generation(c.served.snapshot.name, out.prompt_tokens, n,
                                   times[0] - c.eng.submitted if times else None)


def finish_of(eng):
    """How an engine request ended, for its usage row."""
    if eng.error is not None and not isinstance(eng.error, Cancelled):
        return "error"
    return "cancelled" if eng.cancelled else (eng.out.choices[0].finish_reason or "cancelled")


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
            if self.call.metered is None:  # handed off, not awaited: this task may be being cancelled
                asyncio.get_running_loop().run_in_executor(None, self.gate.meter_when_done, self.call)


class Gate:
    """Admits, answers and meters the generation requests of one app (see the module docstring)."""

    def __init__(self, db, reader, limiter, meters, chat_cap, monitor=None, max_queue=256):
        self.reader, self.limiter, self.chat_cap, self.max_queue = reader, limiter, chat_cap, max_queue
        self.metering = Metering(db, meters, chat_cap, monitor)

    async def admit(self, request, key, s, ids, req, stops, param, text, prefix, images=None, **extra):
        """Check, charge and submit a generation (`images`: the embeddings of its image placeholders); returns
        (Call, rate-limit headers)."""
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
                call.eng = s.engine.submit(ids, params, images)
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
        self.metering.submit(call)

    async def meter(self, call):
        await asyncio.wrap_future(self.metering.submit(call))

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
        await self.meter(call)
        if call.eng.error is not None:  # handled here: an exception left to the app's last handler resets the connection
            raise APIError(500, "The server had an error while processing your request.", "server_error")
        out = call.eng.out
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
        await self.meter(call)
        if eng.error is not None:
            yield sse(error_body("The server had an error while processing your request.", "server_error"))
            return
        for c in eng.out.choices:
            yield chunk(c.index, finish=c.finish_reason)
        if include_usage:
            yield sse(dict(head, object=kind, choices=[], usage=usage_of(eng.out, call.served.engine.stop_ids)))
        yield "data: [DONE]\n\n"
