"""Abuse monitoring per key: each request's input (its user and system text) and each of its answers go through
the moderation classifier (serve/moderation.py). A flagged text is recorded with its key, direction, sha256 and
categories (the text itself only with `keep_text`), in the same transaction as the request's usage row. A key
whose flagged requests reach `suspend_rate` of its requests over the last `window_hours` (once it has made at
least `min_requests`) is suspended: it gets 403 until `nanogpt4 keys reinstate`.
"""
import hashlib
import time

from . import keys


class Monitor:
    def __init__(self, moderator, keep_text=False, suspend_rate=0.5, min_requests=20, window_hours=24.0):
        self.moderator, self.keep_text = moderator, keep_text
        self.suspend_rate, self.min_requests, self.window = suspend_rate, min_requests, window_hours * 3600

    def review(self, requests):
        """For each (input text, [answers]): [(direction, text, categories)] of its flagged texts. One classifier
        call for all of them."""
        texts = [[("request", text)] + [("response", a) for a in answers if a] for text, answers in requests]
        results = iter(self.moderator.classify([t for group in texts for _, t in group]))
        flagged = []
        for group in texts:
            scored = [(d, t, next(results)) for d, t in group]
            flagged.append([(d, t, sorted(c for c, hit in r["categories"].items() if hit))
                            for d, t, r in scored if r["flagged"]])
        return flagged

    def record(self, db, request_id, key_id, flagged, now=None):
        """Record the flagged texts (inside the caller's transaction, after its usage row) and suspend the key if
        it is over the threshold; returns the suspension reason or None."""
        now = time.time() if now is None else now
        for direction, text, categories in flagged:
            db.execute("INSERT INTO flagged (request_id, key_id, at, direction, sha256, categories, text) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (request_id, key_id, now, direction, hashlib.sha256(text.encode("utf-8", "replace")).hexdigest(),
                        ",".join(categories), text if self.keep_text else None))
        if not flagged or key_id is None or not self.suspend_rate:
            return None
        since = now - self.window
        total = db.execute("SELECT COUNT(*) FROM usage WHERE key_id = ? AND at > ?", (key_id, since)).fetchone()[0]
        bad = db.execute("SELECT COUNT(DISTINCT request_id) FROM flagged WHERE key_id = ? AND at > ?",
                         (key_id, since)).fetchone()[0]
        if total >= self.min_requests and bad >= self.suspend_rate * total:
            reason = f"{bad} of {total} requests flagged by moderation in {self.window / 3600:g} h"
            keys.suspend(db, key_id, reason)
            return reason
        return None
