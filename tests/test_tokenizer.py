"""Tokenizer and shard tests: training, round trips, special tokens, the single-file format, chat rendering,
cl100k offline, and shard integrity."""
import json
import sys

import numpy as np
import pytest

from nanogpt4.data import shards
from nanogpt4.tokenizer import SPECIALS, Tokenizer, TokenizerError, cl100k

from conftest import generated_text


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train((d["text"] for d in generated_text(200)), vocab_size=400)


def test_round_trip_and_specials_at_top(tok):
    for text in ["Hello, world!", "naïve café — 東京 🚀🚀", "def f(x):\n\treturn x**2  # ok\n", ""]:
        assert tok.decode(tok.encode(text)) == text
    n = tok.vocab_size
    assert [tok.special(s) for s in SPECIALS] == list(range(n - len(SPECIALS), n))
    assert tok.eot_id == tok.special("endoftext")
    ids = tok.encode("<|endoftext|> and <|image|>")  # user text never becomes special ids
    assert not set(ids) & set(tok.specials.values())
    assert max(tok.encode("the cat sees the moon")) < n - len(SPECIALS)
    assert len(tok.encode("the cat sees the moon")) < len("the cat sees the moon") / 2  # merges were learned


def test_save_load_without_trainer_and_corruption(tok, tmp_path, monkeypatch):
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    monkeypatch.setitem(sys.modules, "rustbpe", None)  # loading must not need the trainer
    again = Tokenizer.load(path)
    text = "The old man follows the long road. 42 + 7"
    assert again.encode(text) == tok.encode(text) and again.vocab_size == tok.vocab_size
    data = json.loads(path.read_text())
    data["ranks"][300], data["ranks"][301] = data["ranks"][301], data["ranks"][300]
    path.write_text(json.dumps(data))
    with pytest.raises(TokenizerError, match="checksum mismatch"):
        Tokenizer.load(path)
    path.write_text(path.read_text()[:100])
    with pytest.raises(TokenizerError, match="not a nanogpt4 tokenizer"):
        Tokenizer.load(path)


def test_cl100k_offline():
    enc = cl100k()
    assert enc.encode_ordinary("hello world") == [15339, 1917]
    assert enc.n_vocab == 100258


def write_corpus(corpus, docs):
    """A corpus directory as `nanogpt4 data` leaves it: train/val/heldout_code splits and a manifest."""
    corpus.mkdir()
    for name, rows in (("train.jsonl", docs[:40]), ("val.jsonl", docs[40:]), ("heldout_code.jsonl", docs[45:])):
        with open(corpus / name, "w") as f:
            for i, d in enumerate(rows):
                f.write(json.dumps({"id": str(i), "source": "gen", **d}) + "\n")
    (corpus / "manifest.json").write_text("{}")
    return corpus


def test_shards_build_load_and_truncation(tok, tmp_path):
    docs = generated_text(50)
    corpus = write_corpus(tmp_path / "corpus", docs)
    meta = shards.build(corpus, tok, tmp_path / "tokens")
    train = shards.load(tmp_path / "tokens", "train")
    assert train.dtype == np.uint16 and len(train) == meta["splits"]["train"]["tokens"]
    assert int((np.asarray(train) == tok.eot_id).sum()) == 40 and train[0] == tok.eot_id
    first_doc = np.asarray(train[1:]).tolist()
    first_doc = first_doc[:first_doc.index(tok.eot_id)]
    assert tok.decode(first_doc) == docs[0]["text"]
    val_text, val_code = shards.load(tmp_path / "tokens", "val_text"), shards.load(tmp_path / "tokens", "val_code")
    assert meta["splits"]["val_text"]["docs"] + meta["splits"]["val_code"]["docs"] == 10
    assert len(val_text) + len(val_code) == meta["splits"]["val"]["tokens"]
    assert shards.build(corpus, tok, tmp_path / "tokens") == meta  # up to date: skipped
    path = tmp_path / "tokens" / "train.bin"
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(shards.ShardError, match="truncated"):
        shards.load(tmp_path / "tokens", "train")


def test_shards_are_rebuilt_for_another_tokenizer_without_a_path(tok, tmp_path):
    corpus = write_corpus(tmp_path / "corpus", generated_text(50))
    shards.build(corpus, tok, tmp_path / "tokens")
    other = Tokenizer.train((d["text"] for d in generated_text(200, seed=3)), vocab_size=300)
    meta = shards.build(corpus, other, tmp_path / "tokens")
    assert meta["vocab_size"] == other.vocab_size
    train = np.asarray(shards.load(tmp_path / "tokens", "train")).tolist()
    assert train[1:1 + len(other.encode(generated_text(50)[0]["text"]))] == other.encode(generated_text(50)[0]["text"])


def test_tokenizer_retrains_when_max_chars_changes(tmp_path, capsys):
    from argparse import Namespace
    from nanogpt4.tokenizer import main
    corpus = write_corpus(tmp_path / "corpus", generated_text(50))
    args = Namespace(corpus=str(corpus), out=str(tmp_path / "tok"), vocab_size=300, max_chars=2000, force=False)
    main(args)
    main(args)
    assert "is up to date" in capsys.readouterr().out
    main(Namespace(**dict(vars(args), max_chars=4000)))
    assert "trained vocab" in capsys.readouterr().out
    assert json.loads((tmp_path / "tok" / "report.json").read_text())["max_chars"] == 4000
