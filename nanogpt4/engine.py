"""The generation engine: every token this project samples comes from here (sample, evals, scaling samplers,
the server, RLHF rollouts).

Continuous batching: requests are submitted from any thread; between decode steps the loop admits them into
free rows of one KV cache (the admitted prompts prefilled together, right-padded; a request's n choices copied
into n rows), runs one batched decode step over every active row, and lets a row go the moment it finishes or
its request is cancelled (the last active row moves into the gap, so the active rows are always rows 0..n-1).
The loop runs in whichever thread calls `generate()` or `serve()`, else in a background thread that `submit()`
starts and that ends when idle. `compile=True` compiles the decode step and the prefill (compiled, with bf16
weights on a CPU with bf16 arithmetic, is the fast CPU path; NOTES.md has the measurements).

Sampling is per row: temperature (0 = greedy), top_k, top_p, stop strings (cut exactly, also when a stop string
spans tokens; text that could still become one is held back from the stream), stop tokens (`<|endoftext|>`,
`<|end|>`), max_tokens, n choices, and a seed. A row draws one uniform number per token from its own generator
and inverts the CDF of its own distribution, so a seeded request's text does not depend on its batch mates.
Every sampled token comes with its log-probability under the distribution it was drawn from (after temperature,
top-k and top-p; for greedy rows, the model's own distribution) and, if asked, the top alternatives under it.

    eng = Engine(model, tok)
    out = eng.generate([ids], SamplingParams(max_tokens=50, temperature=0.8, seed=1))[0]
    out.choices[0].text, out.choices[0].token_ids, out.choices[0].logprobs, out.choices[0].finish_reason
"""
import atexit
import codecs
import collections
import queue
import random
import threading
import time
import weakref
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .common import UserError
from .model.gpt import KVCache


def prompt_ids(tok, text, limit=None):
    """The one rule for a base model's prompt: `<|endoftext|>` (how every training document starts) + the text's
    tokens. With `limit`, a longer prompt loses tokens from its left; returns (ids, tokens cut) so the caller
    reports the cut (evals) or refuses the prompt (the API uses no limit and gets ContextLengthError)."""
    ids = [tok.eot_id] + tok.encode(text)
    cut = max(0, len(ids) - limit) if limit is not None else 0
    return ids[cut:], cut


class ContextLengthError(UserError, ValueError):
    """prompt + max_tokens do not fit the model's context (OpenAI's `context_length_exceeded`)."""
    code = "context_length_exceeded"


class Cancelled(Exception):
    pass


@dataclass
class SamplingParams:
    max_tokens: int = None  # None: up to the end of the context
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: all tokens
    stop: tuple = ()  # stop strings
    seed: int = None
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0
    stop_fn: object = None  # in-process callers: text so far → index to cut at (the answer ends there) or None

    def validate(self):
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be ≥ 1, got {self.max_tokens}")
        if not 0 <= self.temperature <= 100:
            raise ValueError(f"temperature must be in [0, 100], got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or not 1 <= self.n <= 128 or not 0 <= self.top_logprobs <= 20:
            raise ValueError("top_k must be ≥ 0, n in [1, 128], top_logprobs in [0, 20]")
        self.stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError("stop strings must be non-empty strings")
        return self


@dataclass
class Choice:
    index: int
    token_ids: list = field(default_factory=list)  # every sampled token, a closing stop token included
    logprobs: list = field(default_factory=list)  # log-probability of each token under its sampling distribution
    top_logprobs: list = field(default_factory=list)  # per token: {token id: log-probability}, if asked
    text: str = ""  # the answer: stop token excluded, cut before a stop string
    finish_reason: str = None  # "stop" | "length" | "cancelled"
    times: list = field(default_factory=list)  # time.perf_counter() when each token was sampled


@dataclass
class Output:
    prompt_tokens: int
    choices: list


class Request:
    """A submitted request: `result()` waits for it; `events()` yields (choice index, text delta) as text becomes
    final; `cancel()` frees its rows at the next step. `listener`, if set, is called (on the engine's thread)
    after each item put on `stream`, so an event loop can wait without a thread blocked on the queue."""

    def __init__(self, ids, params, images=None):
        self.ids, self.params, self.images = list(ids), params, images
        self.submitted = time.perf_counter()  # with Choice.times: time to first token, inter-token latency
        self.out = Output(len(self.ids), [Choice(i) for i in range(params.n)])
        self.stream = queue.Queue()
        self.done = threading.Event()
        self.cancelled = False
        self.error = None
        self.listener = None

    def cancel(self):
        self.cancelled = True

    def result(self, timeout=None):
        if not self.done.wait(timeout):
            raise TimeoutError("generation did not finish in time")
        if self.error is not None:
            raise self.error
        return self.out

    def events(self):
        while (item := self.stream.get()) is not None:
            yield item
        if self.error is not None:
            raise self.error

    def push(self, item):
        self.stream.put(item)
        if item is None:
            self.done.set()
        if self.listener is not None:
            self.listener()

    def finish(self, error=None):
        self.error = error
        self.push(None)


class Row:
    """One choice being generated: its sampling state and its incremental detokenisation."""

    def __init__(self, req, choice, tok):
        p = req.params
        seed = p.seed if p.seed is not None else random.randrange(2 ** 63)
        self.req, self.choice, self.tok = req, choice, tok
        self.rng = random.Random(f"{seed}:{choice.index}")
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.text, self.sent, self.cut = "", 0, False  # decoded text; how much was streamed; cut at a stop string
        self.hold = max((len(s) for s in p.stop), default=1) - 1

    def add_text(self, token):
        """Append a token's text; returns True when a stop string has appeared (the text is cut before it)."""
        self.text += self.decoder.decode(self.tok.enc.decode_single_token_bytes(token))
        stops, fn = self.req.params.stop, self.req.params.stop_fn
        start = max(0, self.sent - self.hold)
        hits = [i for i in (self.text.find(s, start) for s in stops) if i >= 0]
        if fn is not None and (i := fn(self.text)) is not None:
            hits.append(i)
        if hits:
            self.text, self.cut = self.text[:min(hits)], True
            return True
        return False

    def flush(self, final):
        """Stream the text that can no longer change: all of it when final, else all but a possible stop prefix."""
        if final:
            if not self.cut:  # an unfinished UTF-8 sequence at the end shows as U+FFFD
                self.text += self.decoder.decode(b"", final=True)
            self.choice.text = self.text
            end = len(self.text)
        else:
            end = len(self.text) - self._pending_stop_prefix()
        if end > self.sent:
            self.req.push((self.choice.index, self.text[self.sent:end]))
            self.sent = end

    def _pending_stop_prefix(self):
        n = 0
        for s in self.req.params.stop:
            for k in range(min(len(s) - 1, len(self.text)), n, -1):
                if self.text.endswith(s[:k]):
                    n = k
                    break
        return n


_ENGINES = weakref.WeakSet()


@atexit.register
def _close_all():  # let a step in progress finish before the interpreter tears torch down
    for eng in list(_ENGINES):
        eng.close()


def _decode_logits(model, idx, cache):
    return model(idx, cache=cache)[:, -1]


def _prefill_logits(model, idx, cache, at):
    return model(idx, cache=cache, logits_at=at)


class Engine:
    """Continuous-batching generation over one model (a loaded run, or an in-memory policy being trained).
    `max_rows`: rows decoded together (the KV cache holds this many sequences)."""

    def __init__(self, model, tok, max_rows=32, stop_ids=None, compile=False):
        self.model, self.tok, self.max_rows = model, tok, max_rows
        self.compiled = torch.compile(_decode_logits, dynamic=False) if compile else None
        self.compiled_prefill = torch.compile(_prefill_logits, dynamic=False) if compile else None
        self.n_ctx = model.cfg.seq_len
        self.stop_ids = set(stop_ids) if stop_ids is not None else {tok.eot_id, tok.special("end")}
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.cache = None
        self.rows = []  # Row per active cache row, in cache order
        self.last = None  # (rows,) tokens each active row feeds next
        self.pending = collections.deque()
        self.calls = collections.deque()  # (fn, Future): other work on the model, run between steps (see run)
        self.wake = threading.Condition()
        self.worker, self.closed, self.serving = None, False, 0  # serving: loops running or claimed
        self.loop_lock = threading.Lock()
        _ENGINES.add(self)
        self.stats = dict(decode_steps=0, decode_rows=0, prefills=0, prefill_tokens=0, forward_s=0.0, sample_s=0.0)

    # ---------------------------------------------------------------- submitting
    def check(self, ids, params):
        """Refuse, before any work, what cannot be done: bad parameters, a prompt + max_tokens over the context."""
        params.validate()
        if not ids:
            raise ValueError("empty prompt")
        if params.n > self.max_rows:
            raise ValueError(f"n={params.n} is more than the engine's {self.max_rows} rows")
        need = len(ids) + (params.max_tokens or 1)
        if need > self.n_ctx:
            raise ContextLengthError(
                f"This model's maximum context length is {self.n_ctx} tokens. However, you requested {need} tokens "
                f"({len(ids)} in the prompt, {params.max_tokens or 1} for the completion). Please reduce the length "
                f"of the prompt or the completion.")

    def submit(self, ids, params=None, images=None):
        """Queue a request (prompt token ids); returns its Request at once. Raises before queueing if it cannot
        be served (ContextLengthError, ValueError)."""
        params = params or SamplingParams()
        self.check(ids, params)
        slots = sum(i == self.model.cfg.image_token_id for i in ids)
        if slots != (0 if images is None else images.size(0)):
            raise ValueError(f"{0 if images is None else images.size(0)} image embeddings for {slots} image "
                             "placeholder tokens")
        req = Request(ids, params, images)
        with self.wake:
            if self.closed:
                raise RuntimeError("engine is closed")
            self.pending.append(req)
            self.wake.notify()
            self._start()
        return req

    def generate(self, prompts, params=None, images=None):
        """Token-id prompts → their Outputs, generated together; one SamplingParams or one per prompt; `images`:
        per prompt, the embeddings of its image placeholders (n, n_embd) or None. When no loop is running, the
        calling thread runs it until these are done (see `serve`)."""
        params = params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        images = images or [None] * len(prompts)
        with self.wake:
            inline = self.serving == 0
            if inline:
                self.serving += 1  # claimed: a submit meanwhile queues for this loop instead of starting a thread
        try:
            reqs = [self.submit(ids, p, im) for ids, p, im in zip(prompts, params, images)]
        except BaseException:
            if inline:
                with self.wake:
                    self.serving -= 1
            raise
        if inline:
            self.serve(until=lambda: all(r.done.is_set() for r in reqs), claimed=True)
        return [r.result() for r in reqs]

    def cancel_all(self):
        """Cancel every queued and running request (e.g. an eval that timed out)."""
        for row in list(self.rows):
            row.req.cancel()
        for req in list(self.pending):
            req.cancel()

    # ---------------------------------------------------------------- the loop
    def close(self, timeout=10.0):
        """Stop the worker after the step in progress; what is queued or running is cancelled."""
        with self.wake:
            self.closed = True
            self.wake.notify_all()
        if self.worker is not None and self.worker is not threading.current_thread():
            self.worker.join(timeout)
        for req in [r.req for r in self.rows] + list(self.pending):
            if not req.done.is_set():
                req.cancel()
                req.finish(Cancelled("engine closed"))

    def run(self, fn):
        """Run fn() on the engine's thread between two steps and return its result: other work on the same model
        (likelihood scoring, a benchmark's baseline) then never computes beside a step. All of the model's compute
        staying on one thread also keeps PyTorch to one OpenMP thread team; a second team beside it halves decode
        speed on a 2-core machine (measured)."""
        fut = Future()
        with self.wake:
            if self.closed:
                raise RuntimeError("engine is closed")
            self.calls.append((fn, fut))
            self.wake.notify()
            self._start()
        return fut.result()

    def _start(self):
        """Serve from a background thread (it ends when idle) unless some thread runs the loop already. Called with
        self.wake held; `serving` counts loops claimed, so a request never lands between a loop and none."""
        if self.serving == 0:
            self.serving += 1
            self.worker = threading.Thread(target=self.serve, kwargs=dict(claimed=True, until_idle=True),
                                           name="nanogpt4-engine", daemon=True)
            self.worker.start()

    def serve(self, until=None, claimed=False, until_idle=False):
        """Run the loop in the calling thread (admit, prefill, decode) until `until()` is true, or forever (until
        the engine closes). Without a serving thread, `generate` serves in its caller and `submit` starts a
        background thread that serves until idle. Serving from the thread that loaded the model is faster on
        CPU: PyTorch gives each computing thread its own OpenMP team, and with more OpenMP threads than cores
        libgomp stops spinning between parallel regions (measured on 2 cores: a bf16 1x256 @ 256x1024 decode
        matmul takes 41 µs on the main thread, 103 µs on a second thread)."""
        with self.loop_lock:  # one loop at a time
            self.worker = threading.current_thread()  # close() joins it
            if not claimed:
                with self.wake:
                    self.serving += 1
            released = False
            try:
                released = self._loop(until, until_idle)
            finally:
                with self.wake:
                    if not released:
                        self.serving -= 1
                    if not self.closed and (self.rows or self.pending or self.calls):
                        self._start()  # work left over (submitted by others while we served): hand it on

    def _loop(self, until, until_idle):
        """The loop; returns True when it gave up its claim itself (idle exit, atomically with the idle check)."""
        while until is None or not until():
            with self.wake:
                while not self.rows and not self.pending and not self.calls and not self.closed:
                    if until is not None and until():
                        return False
                    if until_idle:
                        self.serving -= 1
                        return True
                    self.wake.wait(0.05 if until is not None else None)  # idle: sleep until a request arrives
                if self.closed:
                    return False
                calls, self.calls = list(self.calls), collections.deque()
            for fn, fut in calls:
                try:
                    fut.set_result(fn())
                except Exception as e:  # noqa: BLE001 — the caller gets it
                    fut.set_exception(e)
            if not self.rows and not self.pending:
                continue
            try:
                self.step()
            except Exception as e:  # noqa: BLE001 — a bad step fails its requests, the engine keeps serving
                for req in {r.req for r in self.rows}:
                    req.finish(e)
                self.rows, self.last = [], None
        return False

    @torch.inference_mode()
    def step(self):
        """Admit queued requests into free rows (one batched prefill), then one decode step for every active row."""
        if self.cache is None:  # one spare row: a compiled step always runs ≥ 2 rows (see _forward)
            self.cache = KVCache(self.model.cfg, self.max_rows + 1, self.n_ctx, self.dtype, self.device)
        admitted, free = [], self.max_rows - len(self.rows)
        with self.wake:
            while self.pending and self.pending[0].params.n <= free:  # first come, first served
                req = self.pending.popleft()
                if req.cancelled:
                    self._finish_request(req, "cancelled")
                    continue
                admitted.append(req)
                free -= req.params.n
        if admitted:
            try:
                self._prefill(admitted)
            except Exception as e:  # noqa: BLE001 — these requests fail, the running ones go on
                self.rows = [r for r in self.rows if r.req not in admitted]
                self.last = self.last[:len(self.rows)] if self.last is not None else None
                for req in admitted:
                    req.finish(e)
        for row in self.rows:
            if row.req.cancelled:
                row.choice.finish_reason = "cancelled"
                row.choice.text = row.text[:row.sent]  # what its client was sent
        self._release()
        if not self.rows:
            return
        n = len(self.rows)
        t0 = time.perf_counter()
        logits = self._forward(self.last[:, None], 0, n, torch.zeros(n, dtype=torch.long, device=self.device))
        t1 = time.perf_counter()
        self._sample(self.rows, logits)
        self._release()
        st = self.stats
        st["decode_steps"], st["decode_rows"] = st["decode_steps"] + 1, st["decode_rows"] + n
        st["forward_s"], st["sample_s"] = st["forward_s"] + t1 - t0, st["sample_s"] + time.perf_counter() - t1

    def _forward(self, idx, start, stop, at, lengths=None, images=None):
        """Float logits (B,V) at position at[b] of each row b of idx, run on cache rows start..stop-1 and committed
        (lengths: real tokens per right-padded row of a prefill)."""
        if self.compiled is None or images is not None or (idx.size(1) == 1 and lengths is not None):
            view = self.cache.rows(stop, start)
            view.lengths = lengths
            return self.model(idx, images=images, cache=view, logits_at=at).float()
        return self._run_compiled(idx, start, stop, at, lengths)

    def _run_compiled(self, idx, start, stop, at, lengths):
        """A compiled decode step (T = 1) or prefill (T > 1): two graphs whose batch (and prompt length) are
        marked dynamic, so they serve every size; a lone row is padded with the free row after it (dynamo
        specialises a size of 1)."""
        B = stop - start
        if B == 1:
            self.cache.reset(stop)  # always free: at most max_rows rows are active, the cache has max_rows + 1
            idx, at, stop = idx.repeat(2, 1), at.repeat(2), stop + 1
            lengths = None if lengths is None else lengths.repeat(2)
        view = self.cache.rows(stop, start)
        view.lengths = lengths
        for t in (view.k, view.v, view.last_k):
            torch._dynamo.mark_dynamic(t, 1)
        for t in (view.pos, view.tokens, at, idx):
            torch._dynamo.mark_dynamic(t, 0)
        if idx.size(1) > 1:
            torch._dynamo.mark_dynamic(idx, 1)
            logits = self.compiled_prefill(self.model, idx, view, at)
        else:
            logits = self.compiled(self.model, idx, view)
        view.commit()
        return logits[:B].float()

    def _prefill(self, reqs):
        """Run the admitted prompts together (right-padded), copy each prompt's cache into one row per extra
        choice, and sample every choice's first token."""
        r0 = len(self.rows)
        lengths = [len(r.ids) for r in reqs]
        idx = torch.zeros(len(reqs), max(lengths), dtype=torch.long)
        for i, r in enumerate(reqs):
            idx[i, :lengths[i]] = torch.tensor(r.ids)
            self.cache.reset(r0 + i)
        images = [r.images for r in reqs if r.images is not None]
        lengths = torch.tensor(lengths, device=self.device)
        logits = self._forward(idx.to(self.device), r0, r0 + len(reqs), lengths - 1, lengths,
                               torch.cat(images) if images else None)
        self.stats["prefills"] += 1
        self.stats["prefill_tokens"] += int(lengths.sum())
        first, extra, row_logits = [], [], []
        for i, r in enumerate(reqs):
            first.append(Row(r, r.out.choices[0], self.tok))
            row_logits.append(logits[i])
        dst = r0 + len(reqs)
        for i, r in enumerate(reqs):
            for c in r.out.choices[1:]:
                self.cache.copy_row(r0 + i, dst)
                extra.append(Row(r, c, self.tok))
                row_logits.append(logits[i])
                dst += 1
        new = first + extra
        self.rows += new
        grown = torch.zeros(len(self.rows), dtype=torch.long, device=self.device)
        if r0:
            grown[:r0] = self.last[:r0]
        self.last = grown
        self._sample(new, torch.stack(row_logits), offset=r0)

    def _sample(self, rows, logits, offset=0):
        """Draw one token for each of `rows` (cache rows offset..offset+len) from its own distribution: greedy
        rows take the argmax (log-probabilities from the model's own distribution); the others invert the CDF
        of softmax(logits / temperature) restricted to their top-k / top-p set, in vocabulary order, at their
        own uniform number (so what a row draws depends on nothing but its own logits and generator). When every
        row samples from a top-k set, the work is done on the k candidates only (same tokens, a fraction of the
        cost: at 32 rows × 8,192 tokens sampling was a third of a decode step)."""
        ps = [r.req.params for r in rows]
        dev, V = logits.device, logits.size(-1)
        temps = torch.tensor([p.temperature or 1.0 for p in ps], device=dev)[:, None]
        k = [p.top_k if p.temperature and p.top_k else V for p in ps]
        top_p = torch.tensor([p.top_p if p.temperature else 1.0 for p in ps], device=dev)[:, None]
        want_top = max(p.top_logprobs for p in ps)
        vals, cand = logits / temps, None
        if max(k) < V and not want_top:  # every row has a top-k set: keep its candidates, in vocabulary order
            vals, cand = torch.topk(vals, max(k), -1)
            vals = vals.masked_fill(vals < vals.gather(1, torch.tensor(k, device=dev)[:, None] - 1), float("-inf"))
            if (top_p < 1).any():
                probs = vals.softmax(-1)
                vals = vals.masked_fill((probs.cumsum(-1) - probs) >= top_p, float("-inf"))
            cand, order = cand.sort(-1)
            vals = vals.gather(1, order)
        else:
            if min(k) < V:  # top-k: drop what is below each row's k-th largest logit
                kth = torch.topk(vals, max(x for x in k if x < V), -1).values
                kth = kth.gather(1, torch.tensor([min(x, kth.size(1)) for x in k], device=dev)[:, None] - 1)
                vals = vals.masked_fill((vals < kth) & (torch.tensor(k, device=dev)[:, None] < V), float("-inf"))
            if (top_p < 1).any():  # top-p: drop the tokens ranked after the smallest set whose mass reaches top_p
                sorted_vals, order = vals.sort(-1, descending=True)
                probs = sorted_vals.softmax(-1)
                drop = (probs.cumsum(-1) - probs) >= top_p
                vals = vals.masked_fill(torch.zeros_like(drop).scatter(1, order, drop), float("-inf"))
        logp = F.log_softmax(vals, -1)
        u = torch.tensor([r.rng.random() for r in rows], device=dev)
        cdf = logp.exp().cumsum(-1)
        drawn = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None]).clamp_(max=vals.size(-1) - 1)
        greedy = torch.tensor([not p.temperature for p in ps], device=dev)
        pick = torch.where(greedy[:, None], logp.argmax(-1, keepdim=True), drawn)
        chosen = logp.gather(1, pick).squeeze(1)
        tokens = (cand.gather(1, pick) if cand is not None else pick).squeeze(1)
        if want_top:
            tv, ti = torch.topk(logp, min(want_top, V), -1)
            tv, ti = tv.tolist(), ti.tolist()
        self.last[offset:offset + len(rows)] = tokens
        now = time.perf_counter()
        for i, (row, t, lp) in enumerate(zip(rows, tokens.tolist(), chosen.tolist())):
            c, p = row.choice, row.req.params
            c.times.append(now)
            c.token_ids.append(t)
            c.logprobs.append(lp)
            if p.top_logprobs:
                c.top_logprobs.append({a: b for a, b in zip(ti[i][:p.top_logprobs], tv[i][:p.top_logprobs])
                                       if b > float("-inf")})
            if t in self.stop_ids or row.add_text(t):
                c.finish_reason = "stop"
            elif len(c.token_ids) >= (p.max_tokens or self.n_ctx) or len(row.req.ids) + len(c.token_ids) >= self.n_ctx:
                c.finish_reason = "length"
            row.flush(final=c.finish_reason is not None)

    def _release(self):
        """Free the rows of finished choices: the last active row moves into each gap."""
        i = 0
        while i < len(self.rows):
            row = self.rows[i]
            if row.choice.finish_reason is None:
                i += 1
                continue
            last = len(self.rows) - 1
            if i != last:
                self.cache.copy_row(last, i)
                self.last[i] = self.last[last]
            self.rows[i] = self.rows[last]
            self.rows.pop()
            self.last = self.last[:last]
            if all(c.finish_reason is not None for c in row.req.out.choices) and \
                    not any(r.req is row.req for r in self.rows):
                self._finish_request(row.req)

    def _finish_request(self, req, reason=None):
        for c in req.out.choices:
            c.finish_reason = c.finish_reason or reason
        if req.cancelled:
            req.finish(Cancelled("request cancelled"))
        else:
            req.finish()


