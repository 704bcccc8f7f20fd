"""`nanogpt4 data`: builds the corpus — fetch the pinned sources, normalise, drop exact and near duplicates
(MinHash + LSH), drop documents the toxicity classifier flags, split train/val by document — and writes
train.jsonl, val.jsonl, heldout_code.jsonl and manifest.json (every source, hash, count and drop reason).

The held-out code set (sympy) is never trained on: it is deduplicated on its own and any document that also
occurs in the training data is removed from it.
"""
import hashlib
import json
import re
import sys
import sysconfig
import time
import unicodedata
import zlib
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from ..common import atomic_write_bytes, atomic_write_json, cache_dir, iter_jsonl, sha256_file
from . import sources as S

MIN_CHARS = 200  # shorter documents are mostly headers and stubs
VAL_FRACTION = 0.02  # by document, decided by a hash of the document id (stable across runs and machines)
NEAR_DUP_THRESHOLD = 0.8  # estimated Jaccard similarity of word 5-shingles above which a later doc is dropped
TOXIC_PROB = 0.9  # alt-profanity-check probability at which a chunk counts as offensive
TOXIC_FRACTION = 0.1  # a prose document is dropped when more than this fraction of its chunks are offensive


def iter_docs(path):
    return iter_jsonl(path)


# ----------------------------------------------------------------------------- normalisation

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def normalize(text):
    """NFC, \\n line ends, no control characters, no trailing spaces, at most two blank lines in a row."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = re.sub(r"\n{4,}", "\n\n\n", text)
    return text.strip("\n") + "\n"


# ----------------------------------------------------------------------------- near-duplicate detection

N_PERM, BANDS = 128, 16  # 16 bands of 8 rows: candidate pairs from Jaccard ≈ 0.7 up, then checked against the threshold
_rng = np.random.default_rng(0)
_A = (_rng.integers(1, 2 ** 63, N_PERM, dtype=np.uint64) * np.uint64(2) + np.uint64(1))  # odd multipliers
_B = _rng.integers(0, 2 ** 63, N_PERM, dtype=np.uint64)


def minhash(text, k=5):
    """128-value MinHash signature of the document's word k-shingles (multiply-shift hashing, numpy)."""
    words = text.lower().split()
    if len(words) < k:
        words = words + [""] * (k - len(words))
    wh = np.fromiter((zlib.crc32(w.encode()) for w in words), dtype=np.uint64, count=len(words))
    sh = np.zeros(len(words) - k + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(k):
            sh = sh * np.uint64(1_000_003) + wh[j:len(words) - k + 1 + j]
        sig = np.empty(N_PERM, dtype=np.uint64)
        for i0 in range(0, N_PERM, 32):  # blocks keep the (perm × shingle) matrix small
            sig[i0:i0 + 32] = ((_A[i0:i0 + 32, None] * sh[None, :] + _B[i0:i0 + 32, None]) >> np.uint64(32)).min(1)
    return sig


def near_duplicates(texts, threshold=NEAR_DUP_THRESHOLD):
    """Indices of documents that nearly duplicate an earlier kept document (LSH banding, then signature check)."""
    sigs = [minhash(t) for t in texts]
    rows = N_PERM // BANDS
    buckets = defaultdict(list)
    dropped = set()
    for i, sig in enumerate(sigs):
        keys = [(b, sig[b * rows:(b + 1) * rows].tobytes()) for b in range(BANDS)]
        cands = {j for key in keys for j in buckets.get(key, ())}
        if any(np.mean(sigs[j] == sig) >= threshold for j in cands):
            dropped.add(i)
            continue
        for key in keys:
            buckets[key].append(i)
    return dropped


# ----------------------------------------------------------------------------- safety filter

def chunks(text, size=1000):
    """Paragraphs, with long ones cut at line ends into pieces of about `size` characters."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        cur = ""
        for line in para.split("\n"):
            if len(cur) + len(line) > size and cur:
                out.append(cur)
                cur = ""
            cur += line + "\n"
        if cur.strip():
            out.append(cur)
    return out


def toxic_fraction(texts):
    """Per document, the fraction of its chunks alt-profanity-check scores ≥ TOXIC_PROB."""
    from profanity_check import predict_prob
    owners, pieces = [], []
    for i, t in enumerate(texts):
        cs = chunks(t)
        owners += [i] * len(cs)
        pieces += cs
    flagged = np.zeros(len(texts))
    counts = np.bincount(np.asarray(owners, dtype=np.int64), minlength=len(texts)).astype(float) if owners else flagged + 1
    if pieces:
        probs = predict_prob(pieces)
        np.add.at(flagged, np.asarray(owners), probs >= TOXIC_PROB)
    return flagged / np.maximum(counts, 1)


# ----------------------------------------------------------------------------- build

def is_val(doc_id):
    return int(hashlib.sha256(doc_id.encode()).hexdigest()[:8], 16) / 16 ** 8 < VAL_FRACTION


def clean(docs, kind, seen_hashes, stats, toxicity=True):
    """Normalise, drop short / exact-dup / near-dup / toxic documents; update per-source stats in place."""
    kept = []
    for d in docs:
        d["text"] = normalize(d["text"])
        st = stats[d["source"]]
        if len(d["text"]) < MIN_CHARS:
            st["dropped"]["too_short"] += 1
            continue
        h = hashlib.sha256(d["text"].encode()).hexdigest()
        if h in seen_hashes:
            st["dropped"]["exact_duplicate"] += 1
            continue
        seen_hashes.add(h)
        kept.append(d)
    for i in sorted(near_duplicates([d["text"] for d in kept]), reverse=True):
        stats[kept[i]["source"]]["dropped"]["near_duplicate"] += 1
        stats[kept[i]["source"]]["near_duplicate_examples"].append(kept[i]["id"])
        del kept[i]
    if toxicity and kind == "text":
        frac = toxic_fraction([d["text"] for d in kept])
        keep = []
        for d, f in zip(kept, frac):
            if f > TOXIC_FRACTION:
                stats[d["source"]]["dropped"]["toxic"] += 1
                stats[d["source"]]["toxic_examples"].append(d["id"])
            else:
                keep.append(d)
        kept = keep
    return kept


def load_extra(spec):
    """Extra documents: a .txt file or a directory of them, .jsonl with a "text" field, .parquet, or
    hf:NAME_OR_DIR[:CONFIG][:SPLIT] through Hugging Face `datasets.load_dataset` (a hub name, or a local directory
    of data files — the hub is unreachable here, the loading code is the same)."""
    if spec.startswith("hf:"):
        try:
            import datasets
        except ImportError as e:
            raise RuntimeError(f"--add {spec}: needs the `datasets` package (pip install datasets)") from e
        name, config, split = (spec[3:].split(":") + ["", ""])[:3]
        ds = datasets.load_dataset(name, config or None, split=split or "train")
        if "text" not in ds.column_names:
            raise ValueError(f"--add {spec}: the dataset has no 'text' column (has {ds.column_names})")
        for i, text in enumerate(ds["text"]):
            yield f"{i}", text
        return
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"--add {spec}: no such file or directory")
    if path.is_dir():
        for p in sorted(path.rglob("*.txt")):
            yield str(p.relative_to(path)), S.read_text(p)[0]
    elif path.suffix == ".txt":
        yield path.name, S.read_text(path)[0]
    elif path.suffix == ".jsonl":
        for i, row in enumerate(iter_jsonl(path)):
            if "text" not in row:
                raise ValueError(f"{path}: line {i + 1} has no \"text\" field")
            yield str(row.get("id", i)), row["text"]
    elif path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise RuntimeError(f"--add {spec}: needs pyarrow (pip install pyarrow)") from e
        for i, text in enumerate(pq.read_table(path, columns=["text"]).column("text").to_pylist()):
            yield str(i), text
    else:
        raise ValueError(f"--add {spec}: expected a .txt, .jsonl, .parquet file, a directory or hf:NAME")


def _write_jsonl(path, docs):
    atomic_write_bytes(path, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs).encode("utf-8"))


def _outputs_intact(out, manifest):
    return all((out / f).exists() and sha256_file(out / f) == h for f, h in manifest.get("outputs", {}).items())


def stdlib_fingerprint():
    h = hashlib.sha256()
    for name, text in S.stdlib([]):
        h.update(name.encode() + b"\0" + text.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()


def build(out_dir, cache=None, sources=None, extra=(), force=False, toxicity=True, log=print):
    """Build the corpus into out_dir (skipped when its manifest and outputs are intact). Returns the manifest."""
    out, cache = Path(out_dir), Path(cache or cache_dir())
    wanted = [s for s in S.SOURCES if sources is None or s.name in sources]
    if sources is not None and len(wanted) != len(set(sources)):
        unknown = set(sources) - {s.name for s in S.SOURCES}
        raise ValueError(f"unknown sources {sorted(unknown)}; have {[s.name for s in S.SOURCES]}")
    request = dict(sources=[s.name for s in wanted], extra=list(extra), toxicity=toxicity)
    mpath = out / "manifest.json"
    if not force and mpath.exists():
        man = json.loads(mpath.read_text())
        if man.get("request") == request and _outputs_intact(out, man):
            log(f"corpus {out} is up to date")
            return man
    t0 = time.perf_counter()
    stats = defaultdict(lambda: dict(docs_raw=0, bytes_raw=0, dropped=Counter(), near_duplicate_examples=[],
                                     toxic_examples=[]))
    raw = {"text": [], "code": []}
    for src in wanted:
        t = time.perf_counter()
        for name, text in src.documents(cache):
            raw[src.kind].append(dict(id=f"{src.name}/{name}", source=src.name, kind=src.kind, text=text))
            stats[src.name]["docs_raw"] += 1
            stats[src.name]["bytes_raw"] += len(text.encode("utf-8"))
        log(f"  {src.name}: {stats[src.name]['docs_raw']} documents ({time.perf_counter() - t:.1f}s)")
    for i, spec in enumerate(extra):
        name = f"extra{i}"
        for doc_name, text in load_extra(spec):
            raw["text"].append(dict(id=f"{name}/{doc_name}", source=name, kind="text", text=text))
            stats[name]["docs_raw"] += 1
            stats[name]["bytes_raw"] += len(text.encode("utf-8"))
    seen = set()
    kept = clean(raw["text"], "text", seen, stats, toxicity) + clean(raw["code"], "code", seen, stats, toxicity)
    held = [dict(id=f"{S.HELDOUT.name}/{n}", source=S.HELDOUT.name, kind="code", text=t)
            for n, t in S.HELDOUT.documents(cache)]
    stats[S.HELDOUT.name]["docs_raw"] = len(held)
    stats[S.HELDOUT.name]["bytes_raw"] = sum(len(d["text"].encode()) for d in held)
    held = clean(held, "code", seen, stats, toxicity)  # `seen` holds every training hash: held-out stays disjoint

    splits = {"train": [d for d in kept if not is_val(d["id"])], "val": [d for d in kept if is_val(d["id"])],
              "heldout_code": held}
    out.mkdir(parents=True, exist_ok=True)
    outputs = {}
    for name, docs in splits.items():
        _write_jsonl(out / f"{name}.jsonl", docs)
        outputs[f"{name}.jsonl"] = sha256_file(out / f"{name}.jsonl")
    kept_by_src = Counter(d["source"] for ds in splits.values() for d in ds)
    bytes_by_src = Counter()
    for ds in splits.values():
        for d in ds:
            bytes_by_src[d["source"]] += len(d["text"].encode("utf-8"))
    src_rows = []
    entries = [(s.name, s, None) for s in wanted + [S.HELDOUT]] + [(f"extra{i}", None, e) for i, e in enumerate(extra)]
    for name, src, spec in entries:
        st = stats[name]
        row = dict(name=name, kind=src.kind if src else "text", role="heldout" if src is S.HELDOUT else "train",
                   docs_raw=st["docs_raw"], bytes_raw=st["bytes_raw"], docs_kept=kept_by_src[name],
                   bytes_kept=bytes_by_src[name], dropped=dict(st["dropped"]),
                   near_duplicate_examples=st["near_duplicate_examples"][:10], toxic_examples=st["toxic_examples"][:20])
        if src and src.packages:
            row["packages"] = [dict(registry=p.registry, package=p.name, version=p.version, sha256=p.sha256)
                               for p in src.packages]
            row.update(registry=src.packages[0].registry, package=src.packages[0].name, version=src.packages[0].version)
        elif src:
            row.update(registry="local", package=f"CPython {sys.version.split()[0]} stdlib",
                       version=sys.version.split()[0], path=sysconfig.get_paths()["stdlib"],
                       sha256=stdlib_fingerprint(), excluded_dirs=sorted(S.STDLIB_EXCLUDE))
        else:
            row.update(registry="local", package=spec, version="")
        row["license"] = src.license if src else "user supplied"
        src_rows.append(row)
    manifest = dict(
        request=request, created=time.strftime("%Y-%m-%dT%H:%M:%S"), seconds=round(time.perf_counter() - t0, 1),
        sources=src_rows,
        filters=dict(min_chars=MIN_CHARS, near_duplicate=dict(method="MinHash word 5-shingles, 128 perms, 16x8 LSH",
                                                              threshold=NEAR_DUP_THRESHOLD),
                     toxicity=dict(classifier="alt-profanity-check 1.9.1", chunk_prob=TOXIC_PROB,
                                   max_flagged_fraction=TOXIC_FRACTION, applied_to="prose only")
                     if toxicity else None,
                     dropped={r["name"]: r["dropped"] for r in src_rows}),
        splits={k: dict(docs=len(v), bytes=sum(len(d["text"].encode("utf-8")) for d in v)) for k, v in splits.items()},
        split_rule=f"val if sha256(doc id) < {VAL_FRACTION} (by document)",
        outputs=outputs,
    )
    atomic_write_json(mpath, manifest)
    return manifest


def add_args(p):
    p.add_argument("--out", default="runs/default/corpus")
    p.add_argument("--cache", default=None, help="download cache (default $NANOGPT4_CACHE or ~/.cache/nanogpt4)")
    p.add_argument("--sources", default=None, help=f"comma list of {[s.name for s in S.SOURCES]} (default all)")
    p.add_argument("--add", action="append", default=[], help="extra data: .txt/.jsonl/.parquet/dir or hf:NAME[:CONFIG][:SPLIT]")
    p.add_argument("--no-toxicity-filter", action="store_true")
    p.add_argument("--force", action="store_true", help="rebuild even when the outputs are intact")


def main(args):
    man = build(args.out, args.cache, args.sources.split(",") if args.sources else None, args.add, args.force,
                toxicity=not args.no_toxicity_filter)
    print(f"{'source':<16}{'docs raw':>10}{'kept':>8}{'MB kept':>9}  dropped")
    for r in man["sources"]:
        print(f"{r['name']:<16}{r['docs_raw']:>10}{r['docs_kept']:>8}{r['bytes_kept'] / 1e6:>9.2f}  "
              f"{json.dumps(r['dropped'])}")
    print("splits: " + ", ".join(f"{k} {v['docs']} docs / {v['bytes'] / 1e6:.1f} MB" for k, v in man["splits"].items()))
    return man
