"""Rate limits as OpenAI applies them: per key, requests per minute (RPM) and tokens per minute (TPM), and the
chat page's per-user message cap.

RPM and TPM are token buckets that hold one minute's allowance and refill continuously, so a key may burst up
to its limit and then gets its allowance back smoothly. A request is charged before it runs: one request, and
its prompt tokens plus `max_tokens` (or the rest of the context when unset) for each of its `n` choices, as
OpenAI counts `max_tokens` up front. A request that does not fit is refused whole (429, nothing charged) with
`retry-after`; every answer to a key carries OpenAI's headers (`x-ratelimit-limit-requests`,
`-limit-tokens`, `-remaining-requests`, `-remaining-tokens`, `-reset-requests`, `-reset-tokens`; a reset is
the time until the bucket is full again, written like OpenAI's `1s`, `6m0s`, `20ms`). The buckets live in the
server's memory: a restart gives every key a full minute's allowance, as a minute passing would.

The chat page's cap (ChatGPT Plus got GPT-4 "with a usage cap": 100 messages every 4 hours at launch) counts a
user's committed chat-page messages in the usage table (so it survives restarts) plus those in flight.
"""
import math
import threading
import time


class RateLimited(Exception):
    """A 429: OpenAI's message, its error type ('requests' / 'tokens'), seconds to wait, and headers."""

    def __init__(self, message, type_, retry_after, headers=None, code="rate_limit_exceeded"):
        super().__init__(message)
        self.message, self.type, self.code = message, type_, code
        self.retry_after, self.headers = retry_after, dict(headers or {})
        self.headers["retry-after"] = str(max(1, math.ceil(retry_after)))


def duration(seconds):
    """OpenAI's way of writing a reset time: '20ms', '1.5s', '6m0s'."""
    if seconds < 1:
        return f"{int(seconds * 1000)}ms"
    m, s = divmod(seconds, 60)
    s = f"{s:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(m)}m{s}" if m else s


class Bucket:
    """A minute's allowance that refills continuously."""

    def __init__(self, per_minute, now):
        self.capacity, self.level, self.t = per_minute, float(per_minute), now

    def refill(self, now):
        self.level = min(self.capacity, self.level + (now - self.t) * self.capacity / 60)
        self.t = now

    def wait(self, amount):  # seconds until `amount` is available
        return max(0.0, amount - self.level) * 60 / self.capacity

    def reset(self):  # seconds until full
        return (self.capacity - self.level) * 60 / self.capacity


class Limiter:
    """Per-key RPM and TPM buckets."""

    def __init__(self, clock=time.monotonic):
        self.clock, self.lock, self.buckets = clock, threading.Lock(), {}

    def _buckets(self, key, now):
        got = self.buckets.get(key.id)
        if got is None or (got[0].capacity, got[1].capacity) != (key.rpm, key.tpm):  # new key, or new limits
            got = self.buckets[key.id] = (Bucket(key.rpm, now), Bucket(key.tpm, now))
        for b in got:
            b.refill(now)
        return got

    def take(self, key, tokens, model):
        """Charge one request and `tokens` to `key`; returns the x-ratelimit-* headers. Raises RateLimited (nothing
        charged) when either allowance is short."""
        with self.lock:
            req, tok = self._buckets(key, self.clock())
            if tokens > key.tpm:
                raise RateLimited(f"Request too large for {model} on tokens per min (TPM): Limit {key.tpm}, "
                                  f"Requested {tokens}. The input or output tokens must be reduced in order to run "
                                  f"successfully.", "tokens", 60, self.headers(key, req, tok))
            for bucket, amount, kind, name in ((req, 1, "requests", "RPM"), (tok, tokens, "tokens", "TPM")):
                if bucket.level < amount:
                    wait = bucket.wait(amount)
                    raise RateLimited(f"Rate limit reached for {model} on {kind} per min ({name}): Limit "
                                      f"{bucket.capacity}, Used {bucket.capacity - int(bucket.level)}, Requested "
                                      f"{amount}. Please try again in {duration(wait)}.", kind, wait,
                                      self.headers(key, req, tok))
            req.level -= 1
            tok.level -= tokens
            return self.headers(key, req, tok)

    @staticmethod
    def headers(key, req, tok):
        return {"x-ratelimit-limit-requests": str(key.rpm), "x-ratelimit-limit-tokens": str(key.tpm),
                "x-ratelimit-remaining-requests": str(int(req.level)),
                "x-ratelimit-remaining-tokens": str(int(tok.level)),
                "x-ratelimit-reset-requests": duration(req.reset()), "x-ratelimit-reset-tokens": duration(tok.reset())}


class ChatCap:
    """At most `messages` chat-page messages per user in any `hours`-long window (0 messages: no cap)."""

    def __init__(self, messages=100, hours=4.0):
        self.messages, self.seconds = messages, hours * 3600
        self.lock, self.inflight = threading.RLock(), {}  # the server meters (commits) under this lock too

    def admit(self, db, user, now=None):
        """Count one message for `user` (release it with `done` once its usage row is committed, under `lock`), or
        raise RateLimited when the cap is reached. `db` is read only: best a connection that sees committed rows."""
        if not self.messages:
            return
        now = time.time() if now is None else now
        with self.lock:
            count, oldest = db.execute("SELECT COUNT(*), MIN(at) FROM usage WHERE user = ? AND client = 'chat-page' "
                                       "AND at > ?", (user, now - self.seconds)).fetchone()
            if count + self.inflight.get(user, 0) >= self.messages:
                wait = (oldest + self.seconds - now) if oldest else self.seconds
                at = time.strftime("%H:%M UTC", time.gmtime(now + wait))
                raise RateLimited(f"You've reached the current usage cap of {self.messages} messages every "
                                  f"{self.seconds / 3600:g} hours. Try again after {at}.", "requests", wait,
                                  code="usage_cap_reached")
            self.inflight[user] = self.inflight.get(user, 0) + 1

    def done(self, user):
        if not self.messages:
            return
        with self.lock:
            self.inflight[user] -= 1
            if not self.inflight[user]:
                del self.inflight[user]
