"""`nanogpt4 data`: builds the corpus — fetch the pinned sources (sources.py), decode, normalise, drop short
documents, exact and near duplicates (MinHash + LSH), and prose the toxicity classifier flags, split train/val by
document — and writes, atomically, into the out dir:

    train.jsonl, val.jsonl, heldout_code.jsonl   one {"id": "<source>/<name>", "source", "kind": "text"|"code", "text"}
                                                 per line
    manifest.json                                every source (registry, package, version, sha256, docs and bytes
                                                 before/after), every drop per source and reason, the splits, the
                                                 outputs' sha256, the stdlib fingerprint; written last

The held-out code set (sympy) is never trained on: it is deduplicated on its own, and any document that is an exact
or near copy of a training code document is removed from it. A build whose manifest matches the request and whose
outputs still have their recorded hashes is skipped.
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
MIN_VAL_DOCS = 3  # …but at least this many per source, for sources with at least 10x as many documents
NEAR_DUP_THRESHOLD = 0.8  # estimated Jaccard similarity of word 5-shingles above which a later doc is dropped
TOXIC_PROB = 0.9  # alt-profanity-check probability at which a paragraph (chunk) counts as offensive
TOXIC_FRACTION = 0.1  # a prose document is dropped when more than this fraction of its chunks are offensive…
TOXIC_MIN_FLAGGED = 3  # …and at least this many are (or all of them): see is_toxic


def iter_docs(path):
    """The documents of one output file (train.jsonl, val.jsonl, heldout_code.jsonl), as dicts."""
    return iter_jsonl(path)


# ----------------------------------------------------------------------------- normalisation

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")  # C0 controls but \t \n \r; DEL; lone surrogates


def normalize(text):
    """NFC, \\n line ends, no control characters, no trailing spaces, at most two blank lines in a row, one final \\n."""
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


def near_duplicates(texts, threshold=NEAR_DUP_THRESHOLD, reference=()):
    """{i: j} for each text i that nearly duplicates an earlier kept text j, or reference[j] when j < 0 (LSH banding
    finds candidates, then the estimated Jaccard similarity — the fraction of equal signature values — decides)."""
    n_ref = len(reference)
    sigs = [minhash(t) for t in reference] + [minhash(t) for t in texts]
    rows = N_PERM // BANDS
    buckets = defaultdict(list)
    dropped = {}
    for i, sig in enumerate(sigs):
        keys = [(b, sig[b * rows:(b + 1) * rows].tobytes()) for b in range(BANDS)]
        if i >= n_ref:
            cands = sorted({j for key in keys for j in buckets.get(key, ())})
            match = next((j for j in cands if np.mean(sigs[j] == sig) >= threshold), None)
            if match is not None:
                dropped[i - n_ref] = match - n_ref
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


def toxic_counts(texts):
    """Per document: how many of its chunks alt-profanity-check scores ≥ TOXIC_PROB, and how many chunks it has."""
    from profanity_check import predict_prob
    owners, pieces = [], []
    for i, t in enumerate(texts):
        cs = chunks(t)
        owners += [i] * len(cs)
        pieces += cs
    owners = np.asarray(owners, dtype=np.int64)
    counts = np.bincount(owners, minlength=len(texts))
    flagged = np.zeros(len(texts), dtype=np.int64)
    if pieces:
        np.add.at(flagged, owners, predict_prob(pieces) >= TOXIC_PROB)
    return flagged, counts


def is_toxic(flagged, chunks):
    """More than TOXIC_FRACTION of the chunks flagged, and at least TOXIC_MIN_FLAGGED of them (or every chunk of a short
    document). The classifier is a bag-of-words model: archaic prose trips it once or twice per chapter ('ass',
    'whore', 'hell' in the KJV and Moby-Dick; measured: with the fraction alone 12 Bible chapters, 3 Moby-Dick chapters
    and a WordNet block of verbs of killing went), while text that is really abusive trips it again and again (the
    one Brown file this rule drops has 26 of 240 sentences flagged, most of them slurs)."""
    return flagged > TOXIC_FRACTION * chunks and (flagged >= TOXIC_MIN_FLAGGED or flagged == chunks)


# ----------------------------------------------------------------------------- build

def id_fraction(doc_id):
    """A number in [0, 1) fixed by the document id: the first 32 bits of its sha256."""
    return int(hashlib.sha256(doc_id.encode()).hexdigest()[:8], 16) / 16 ** 8


def val_ids(docs):
    """The validation documents: id_fraction < VAL_FRACTION, topped up per source with the next-lowest ids to
    MIN_VAL_DOCS where the source has 10x that many. Depends only on the ids, not on their order."""
    by_source = defaultdict(list)
    for d in docs:
        by_source[d["source"]].append(d["id"])
    val = set()
    for ids in by_source.values():
        ids = sorted(ids, key=id_fraction)
        n = sum(id_fraction(i) < VAL_FRACTION for i in ids)
        if len(ids) >= 10 * MIN_VAL_DOCS:
            n = max(n, MIN_VAL_DOCS)
        val.update(ids[:n])
    return val


def text_hash(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def clean(docs, kind, stats, seen=None, toxicity=True, training=()):
    """Normalise, then drop short / exact-duplicate / near-duplicate / toxic (prose only) documents, counting each
    drop per source and reason in `stats`. `seen` (exact hashes) is shared across calls so that no text is kept twice.
    `training`: for the held-out set, the kept training documents it must be disjoint from ('in_training' for an
    exact copy, 'near_duplicate_of_training' for a near one)."""
    seen = set() if seen is None else seen
    train_hashes = {text_hash(d["text"]) for d in training}
    kept = []
    for d in docs:
        d["text"] = normalize(d["text"])
        st = stats[d["source"]]
        h = text_hash(d["text"])
        if len(d["text"]) < MIN_CHARS:
            st["dropped"]["too_short"] += 1
        elif h in train_hashes:
            st["dropped"]["in_training"] += 1
        elif h in seen:
            st["dropped"]["exact_duplicate"] += 1
        else:
            seen.add(h)
            kept.append(d)
    training = [d for d in training if d["kind"] == kind]  # near duplicates are looked for among the same kind
    near = near_duplicates([d["text"] for d in kept], reference=[d["text"] for d in training])
    for i, j in sorted(near.items(), reverse=True):
        other = training[j] if j < 0 else kept[j]
        st = stats[kept[i]["source"]]
        st["dropped"]["near_duplicate_of_training" if j < 0 else "near_duplicate"] += 1
        st["near_duplicate_examples"].append(f"{kept[i]['id']} ~ {other['id']}")
        del kept[i]
    if toxicity and kind == "text":
        flagged, counts = toxic_counts([d["text"] for d in kept])
        keep = []
        for d, f, n in zip(kept, flagged, counts):
            if is_toxic(f, n):
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
            yield str(p.relative_to(path)), p.read_bytes()
    elif path.suffix == ".txt":
        yield path.name, path.read_bytes()
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
    for name, data in S.stdlib([]):  # sorted by path
        h.update(name.encode() + b"\0" + data + b"\0")
    return h.hexdigest()


def _tree_digest(path, pattern):
    """sha256 of a file, or of the sorted (relative path, bytes) of a directory's files matching pattern."""
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for p in sorted(p for p in path.rglob(pattern) if p.is_file()):
        h.update(str(p.relative_to(path)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def _extra_fingerprint(spec):
    """What identifies an extra source's content (its spec string is in the request too), so that changing it
    triggers a rebuild: the digest of a local file or of a directory's .txt files; for hf:, the digest of every
    file of a local dataset directory, or the locally cached revision of a hub dataset (None if not cached)."""
    if not spec.startswith("hf:"):
        return _tree_digest(Path(spec), "*.txt") if Path(spec).exists() else None
    name = spec[3:].split(":")[0]
    if Path(name).exists():
        return _tree_digest(Path(name), "*")
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:
        return None
    ref = Path(HF_HUB_CACHE) / f"datasets--{name.replace('/', '--')}" / "refs" / "main"
    return ref.read_text().strip() if ref.exists() else None


def _request(wanted, extra, toxicity):
    """Everything the outputs depend on: when it changes, a build is not skipped."""
    pins = {s.name: [sys.version.split()[0], stdlib_fingerprint()] if s.extract is S.stdlib else
            [p.sha256 for p in s.packages] for s in wanted + [S.HELDOUT]}
    settings = dict(min_chars=MIN_CHARS, val_fraction=VAL_FRACTION, min_val_docs=MIN_VAL_DOCS,
                    near_dup=NEAR_DUP_THRESHOLD, toxic_prob=TOXIC_PROB, toxic_fraction=TOXIC_FRACTION,
                    toxic_min_flagged=TOXIC_MIN_FLAGGED)
    return dict(sources=[s.name for s in wanted], extra=[[e, _extra_fingerprint(e)] for e in extra],
                toxicity=toxicity, pins=pins, settings=settings)


def build(out_dir, cache=None, sources=None, extra=(), force=False, toxicity=True, log=print):
    """Build the corpus into out_dir (skipped when its manifest and outputs are intact). Returns the manifest."""
    out, cache = Path(out_dir), Path(cache or cache_dir())
    wanted = [s for s in S.SOURCES if sources is None or s.name in sources]
    if sources is not None and len(wanted) != len(set(sources)):
        unknown = set(sources) - {s.name for s in S.SOURCES}
        raise ValueError(f"unknown sources {sorted(unknown)}; have {[s.name for s in S.SOURCES]}")
    request = _request(wanted, list(extra), toxicity)
    mpath = out / "manifest.json"
    if not force and mpath.exists():
        man = json.loads(mpath.read_text())
        if man.get("request") == request and _outputs_intact(out, man):
            log(f"corpus {out} is up to date")
            return man
    t0 = time.perf_counter()
    stats = defaultdict(lambda: dict(docs_raw=0, bytes_raw=0, latin1_fallback=0, dropped=Counter(),
                                     near_duplicate_examples=[], toxic_examples=[]))

    def load(source, kind, docs, into):
        """Fetch (docs() is called here) and decode a source's (name, bytes) documents into `into`, counting raw
        docs/bytes and latin-1 fallbacks."""
        t, st = time.perf_counter(), stats[source]
        for name, data in docs():
            text, fell_back = S.decode(data)
            into.append(dict(id=f"{source}/{name}", source=source, kind=kind, text=text))
            st["docs_raw"] += 1
            st["bytes_raw"] += len(data) if isinstance(data, bytes) else len(data.encode("utf-8", "surrogatepass"))
            st["latin1_fallback"] += fell_back
        log(f"  {source}: {st['docs_raw']} documents ({time.perf_counter() - t:.1f}s)")

    raw = {"text": [], "code": []}
    for src in wanted:
        load(src.name, src.kind, lambda: src.documents(cache), raw[src.kind])
    for i, spec in enumerate(extra):
        load(f"extra{i}", "text", lambda: load_extra(spec), raw["text"])
    held = []
    load(S.HELDOUT.name, "code", lambda: S.HELDOUT.documents(cache), held)
    t = time.perf_counter()
    seen = set()
    kept = clean(raw["text"], "text", stats, seen, toxicity) + clean(raw["code"], "code", stats, seen, toxicity)
    held = clean(held, "code", stats, toxicity=toxicity, training=kept)
    log(f"  cleaned, deduplicated{', safety-filtered' if toxicity else ''} ({time.perf_counter() - t:.1f}s)")

    val = val_ids(kept)
    splits = {"train": [d for d in kept if d["id"] not in val], "val": [d for d in kept if d["id"] in val],
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
                   bytes_kept=bytes_by_src[name], latin1_fallback_docs=st["latin1_fallback"], dropped=dict(st["dropped"]),
                   near_duplicate_examples=st["near_duplicate_examples"][:10], toxic_examples=st["toxic_examples"][:20])
        if src and src.packages:
            row["packages"] = [dict(registry=p.registry, package=p.name, version=p.version, sha256=p.sha256)
                               for p in src.packages]
            first = src.packages[0]  # the one the documents come from (the bible's reader binary is the second)
            row.update(registry=first.registry, package=first.name, version=first.version, sha256=first.sha256)
        elif src and src.extract is S.stdlib:
            row.update(registry="local", package=f"CPython {sys.version.split()[0]} stdlib",
                       version=sys.version.split()[0], path=sysconfig.get_paths()["stdlib"],
                       sha256=request["pins"][name][1], excluded_dirs=sorted(S.STDLIB_EXCLUDE),
                       sha256_of="sorted (relative path, file bytes) of every *.py outside the excluded dirs")
        elif src:
            row.update(registry="local", package=src.name, version="")
        else:
            row.update(registry="hf" if spec.startswith("hf:") else "local", package=spec, version="",
                       sha256=_extra_fingerprint(spec))
        row["license"] = src.license if src else "user supplied"
        src_rows.append(row)
    manifest = dict(
        request=request, created=time.strftime("%Y-%m-%dT%H:%M:%S"), seconds=round(time.perf_counter() - t0, 1),
        sources=src_rows,
        filters=dict(min_chars=MIN_CHARS, near_duplicate=dict(method="MinHash word 5-shingles, 128 perms, 16x8 LSH",
                                                              threshold=NEAR_DUP_THRESHOLD),
                     toxicity=dict(classifier="alt-profanity-check 1.9.1", chunk_prob=TOXIC_PROB,
                                   max_flagged_fraction=TOXIC_FRACTION, min_flagged=TOXIC_MIN_FLAGGED,
                                   chunks="paragraphs, long ones cut at line ends into ~1000-character pieces",
                                   rule=f"drop when flagged > {TOXIC_FRACTION} x chunks and (flagged >= "
                                        f"{TOXIC_MIN_FLAGGED} or all chunks flagged)", applied_to="prose only")
                     if toxicity else None,
                     dropped={r["name"]: r["dropped"] for r in src_rows}),
        splits={k: dict(docs=len(v), bytes=sum(len(d["text"].encode("utf-8")) for d in v)) for k, v in splits.items()},
        split_rule=f"by document: val if the first 32 bits of sha256(doc id) / 2**32 < {VAL_FRACTION}, topped up to "
                   f"{MIN_VAL_DOCS} per source (next-lowest hashes) for sources with >= {10 * MIN_VAL_DOCS} docs",
        decoding="UTF-8, latin-1 for documents that are not valid UTF-8 (latin1_fallback_docs per source)",
        outputs=outputs,
    )
    atomic_write_json(mpath, manifest)
    return manifest


def add_args(p):
    p.add_argument("--out", default="runs/default/corpus", help="corpus directory to write")
    p.add_argument("--cache", default=None, help="download cache (default $NANOGPT4_CACHE or ~/.cache/nanogpt4)")
    p.add_argument("--sources", default=None, help=f"comma list of {[s.name for s in S.SOURCES]} (default all)")
    p.add_argument("--add", action="append", default=[],
                   help="extra data (repeatable): a .txt file or a directory of them, .jsonl with a 'text' field, "
                        ".parquet, or hf:DATASET[:CONFIG][:SPLIT]")
    p.add_argument("--no-toxicity-filter", action="store_true", help="keep prose the safety classifier flags")
    p.add_argument("--force", action="store_true", help="rebuild even when the outputs are intact")


def main(args):
    names = [n.strip() for n in args.sources.split(",") if n.strip()] if args.sources else None
    man = build(args.out, args.cache, names, args.add, args.force,
                toxicity=not args.no_toxicity_filter)
    print(f"{'source':<16}{'docs raw':>9}{'kept':>7}{'MB raw':>8}{'MB kept':>9}  dropped (reason: docs)")
    for r in man["sources"]:
        dropped = ", ".join(f"{k}: {v}" for k, v in sorted(r["dropped"].items())) or "-"
        print(f"{r['name']:<16}{r['docs_raw']:>9}{r['docs_kept']:>7}{r['bytes_raw'] / 1e6:>8.2f}"
              f"{r['bytes_kept'] / 1e6:>9.2f}  {dropped}")
    print("splits: " + ", ".join(f"{k} {v['docs']} docs / {v['bytes'] / 1e6:.1f} MB" for k, v in man["splits"].items()))
    return man
