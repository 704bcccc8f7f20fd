"""Contamination check by the GPT-4 report's method (its Appendix C).

Training text and eval items are normalised the same way — every character that is not a letter or digit is
removed (spaces and symbols) — then, for each eval item, three 50-character substrings are drawn at random (the
whole item when it is shorter) and the item is contaminated when any of them occurs in the normalised training
corpus. The corpus side is an index of the 64-bit polynomial hashes of all its 50-character windows, sorted
(numpy; built once and cached next to the corpus, ~8 bytes per character), so a lookup is a binary search; every
hash hit is confirmed against the text, so a collision cannot mark an item.
"""
import hashlib
import inspect
import json
import random
from pathlib import Path

import numpy as np

from ..common import atomic_write_bytes, atomic_write_json

WINDOW = 50
BASE = np.uint64(1_000_003)


def normalize(text):
    return "".join(c for c in text if c.isalnum())


def rule():
    """What an index depends on besides the corpus: the normalisation (its source), the window and the hash."""
    return dict(normalize=inspect.getsource(normalize), window=WINDOW, hash=f"polynomial, base {BASE}, mod 2^64")


def _codes(text):
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)


def window_hashes(codes, w=WINDOW):
    """Hash of every w-long window of a code array (uint64 arithmetic wraps: a polynomial hash mod 2^64)."""
    n = len(codes) - w + 1
    if n <= 0:
        return np.zeros(0, dtype=np.uint64)
    h = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(w):
            h = h * BASE + codes[k:k + n]
    return h


class CorpusIndex:
    """Sorted window hashes of the normalised training documents (each document on its own: no window spans two)."""

    def __init__(self, text, hashes, positions):
        self.text, self.hashes, self.positions = text, hashes, positions

    @classmethod
    def build(cls, docs):
        parts, offsets, pos = [], [], 0
        for d in docs:
            n = normalize(d)
            if len(n) >= 1:
                parts.append(n)
                offsets.append(pos)
                pos += len(n) + 1
        text = "\x00".join(parts)  # a separator no normalised text contains
        codes = _codes(text)
        h = window_hashes(codes)
        valid = np.ones(len(h), dtype=bool)  # drop windows that straddle a separator
        seps = np.flatnonzero(codes == 0)
        for s in seps:
            valid[max(0, s - WINDOW + 1):s + 1] = False
        idx = np.flatnonzero(valid)
        order = np.argsort(h[idx], kind="stable")
        return cls(text, h[idx][order], idx[order].astype(np.int64))

    @classmethod
    def load_or_build(cls, corpus_file, cache_dir):
        """Index of a corpus JSONL ({"text": …} per line), cached under cache_dir by the file's sha256 and the rule."""
        corpus_file = Path(corpus_file)
        digest = hashlib.sha256(corpus_file.read_bytes()).hexdigest()[:16]
        rule_digest = hashlib.sha256(json.dumps(rule(), sort_keys=True).encode()).hexdigest()[:8]
        base = Path(cache_dir) / f"contamination-{digest}-{rule_digest}"
        if (base / "meta.json").exists():
            z = np.load(base / "index.npz")
            return cls((base / "text.txt").read_text(encoding="utf-8"), z["hashes"], z["positions"])
        docs = [json.loads(line)["text"] for line in corpus_file.open(encoding="utf-8") if line.strip()]
        idx = cls.build(docs)
        base.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(base / "text.txt", idx.text.encode("utf-8"))
        tmp = base / "index.tmp.npz"
        np.savez(tmp, hashes=idx.hashes, positions=idx.positions)
        tmp.replace(base / "index.npz")
        atomic_write_json(base / "meta.json", dict(corpus=str(corpus_file), docs=len(docs), windows=len(idx.hashes),
                                                     rule=rule()))
        return idx

    def contains(self, s):
        """Whether normalised string s occurs in the corpus (s of WINDOW characters: index; shorter: text scan)."""
        if len(s) != WINDOW:
            return s in self.text if s else False
        h = window_hashes(_codes(s))[0]
        lo, hi = np.searchsorted(self.hashes, [h, h], side="left")[0], np.searchsorted(self.hashes, h, side="right")
        return any(self.text[p:p + WINDOW] == s for p in self.positions[lo:hi])


def probes(item_text, rng, k=3):
    """The report's three random 50-character substrings of a normalised item (the whole item if shorter)."""
    n = normalize(item_text)
    if len(n) <= WINDOW:
        return [n] if n else []
    return [n[i:i + WINDOW] for i in (rng.randrange(len(n) - WINDOW + 1) for _ in range(k))]


def check(index, items, seed=0):
    """items: {item id: text}. Returns {item id: contaminated?}; the probes of an item are seeded by its id."""
    return {iid: any(index.contains(p) for p in probes(text, random.Random(f"{iid}:{seed}")))
            for iid, text in items.items()}
