"""Token shards: each corpus split tokenised into a flat uint16 file (memory-mapped for training), every
document preceded by <|endoftext|>, with meta.json holding counts and sha256s."""
import json
from pathlib import Path

import numpy as np

from ..common import UserError, atomic_write_bytes, atomic_write_json, iter_jsonl, sha256_file

# output split ← (corpus file, document kind filter)
SPLITS = {
    "train": ("train.jsonl", None),
    "val": ("val.jsonl", None),
    "val_text": ("val.jsonl", "text"),  # val loss on prose and on in-distribution code, reported separately
    "val_code": ("val.jsonl", "code"),
    "heldout_code": ("heldout_code.jsonl", None),  # never trained on: the scaling-law target
}


class ShardError(UserError, ValueError):
    pass


def _fresh(out, meta, tok_sha, corpus_sha):
    if meta.get("tokenizer_digest") != tok_sha or meta.get("corpus_manifest_sha256") != corpus_sha:
        return False
    return all((out / f"{s}.bin").exists() and sha256_file(out / f"{s}.bin") == v["sha256"]
               for s, v in meta["splits"].items())


def build(corpus_dir, tokenizer, out_dir, force=False, batch_docs=2048):
    """Tokenise the corpus splits into out_dir/<split>.bin; skipped when meta.json says it is up to date."""
    corpus_dir, out = Path(corpus_dir), Path(out_dir)
    if tokenizer.vocab_size > 65536:
        raise ShardError(f"vocab {tokenizer.vocab_size} does not fit uint16 shards")
    tok_sha = tokenizer.digest()
    corpus_sha = sha256_file(corpus_dir / "manifest.json")
    meta_path = out / "meta.json"
    if not force and meta_path.exists() and _fresh(out, json.loads(meta_path.read_text()), tok_sha, corpus_sha):
        return json.loads(meta_path.read_text())
    splits = {}
    for name, (fname, kind) in SPLITS.items():
        docs = [d["text"] for d in iter_jsonl(corpus_dir / fname) if kind is None or d.get("kind") == kind]
        parts, n_bytes = [], 0
        for i in range(0, len(docs), batch_docs):
            chunk = docs[i:i + batch_docs]
            for ids in tokenizer.encode_batch(chunk):
                parts.append(np.asarray([tokenizer.eot_id] + ids, dtype=np.uint16))
            n_bytes += sum(len(t.encode("utf-8")) for t in chunk)
        arr = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)
        atomic_write_bytes(out / f"{name}.bin", arr.tobytes())
        splits[name] = dict(tokens=int(arr.size), docs=len(docs), bytes=n_bytes, sha256=sha256_file(out / f"{name}.bin"))
    meta = dict(vocab_size=tokenizer.vocab_size, eot_id=tokenizer.eot_id, dtype="uint16", tokenizer_digest=tok_sha,
                corpus_manifest_sha256=corpus_sha, splits=splits)
    atomic_write_json(meta_path, meta)
    return meta


def load(out_dir, split):
    """A split as a read-only uint16 memmap; a missing or truncated file is a clear error."""
    out = Path(out_dir)
    meta = json.loads((out / "meta.json").read_text())
    if split not in meta["splits"]:
        raise ShardError(f"{out}: no split {split!r} (have {sorted(meta['splits'])})")
    path, n = out / f"{split}.bin", meta["splits"][split]["tokens"]
    if not path.exists() or path.stat().st_size != 2 * n:
        raise ShardError(f"{path}: expected {2 * n} bytes, found "
                         f"{path.stat().st_size if path.exists() else 'no file'} (truncated? rebuild with --force)")
    if n == 0:
        return np.zeros(0, dtype=np.uint16)
    return np.memmap(path, dtype=np.uint16, mode="r", shape=(n,))
