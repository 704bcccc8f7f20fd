"""Corpus tests: pinned-package verification, normalisation, dedup, the safety filter, splits, the manifest,
atomic outputs, extra local data, and one real fetch from Debian (marked `network`)."""
import argparse
import hashlib
import json

import pytest

from nanogpt4.common import sha256_file
from nanogpt4.data import corpus, sources as S

QUIET = dict(log=lambda *a: None)


def prose(seed, n=60):
    import random
    rng = random.Random(seed)
    words = "river stone light green house morning letter window garden silver quiet road music winter".split()
    return " ".join(rng.choice(words) for _ in range(n)) + "."


def code(*ks):
    return "\n".join(f"def f{i}(x):\n    return x * {i}\n" * 20 for i in ks)


# ----------------------------------------------------------------------------- fetching

def test_wrong_sha256_is_a_clear_error_naming_the_package(tmp_path, monkeypatch):
    def fake_download(self, dest):
        (dest / self.filename).write_bytes(b"not what was pinned")
    monkeypatch.setattr(S.Package, "download", fake_download)
    pkg = S.Package("npm", "some-pkg", "1.2.3", "0" * 64, "some-pkg-1.2.3.tgz")
    with pytest.raises(S.FetchError, match="some-pkg 1.2.3: sha256 .* does not match"):
        pkg.fetch(tmp_path)
    assert not (tmp_path / "packages" / "some-pkg-1.2.3.tgz").exists()  # the bad file is not kept


def test_cached_package_is_reused_and_a_corrupt_one_fetched_again(tmp_path, monkeypatch):
    good = b"the pinned bytes"
    pkg = S.Package("npm", "some-pkg", "1.2.3", hashlib.sha256(good).hexdigest(), "some-pkg-1.2.3.tgz")
    calls = []

    def fake_download(self, dest):
        calls.append(self.name)
        (dest / self.filename).write_bytes(good)
    monkeypatch.setattr(S.Package, "download", fake_download)
    path = pkg.fetch(tmp_path)
    assert path.read_bytes() == good and len(calls) == 1
    pkg.fetch(tmp_path)
    assert len(calls) == 1  # cached and verified: not downloaded again
    path.write_bytes(b"corrupted in the cache")
    assert pkg.fetch(tmp_path).read_bytes() == good and len(calls) == 2


@pytest.mark.network
def test_failed_download_is_a_clear_error(tmp_path):
    pkg = S.Package("pypi", "nanogpt4-no-such-package-xyz", "0.0.1", "0" * 64, "x.tar.gz", sdist=True)
    with pytest.raises(S.FetchError, match="nanogpt4-no-such-package-xyz==0.0.1: download failed"):
        pkg.fetch(tmp_path)


# ----------------------------------------------------------------------------- cleaning

def test_normalize_and_decode():
    assert corpus.normalize("a\r\nb  \r\n\n\n\n\n\nc\x00\x07") == "a\nb\n\n\nc\n"
    assert corpus.normalize("e\u0301") == "\u00e9\n"  # NFC
    assert corpus.normalize("tab\tkept\x1b[0m") == "tab\tkept[0m\n"
    assert S.decode("caf\u00e9".encode()) == ("caf\u00e9", False)
    assert S.decode("caf\u00e9".encode("latin-1")) == ("caf\u00e9", True)


def test_near_duplicates_found_and_distinct_docs_kept():
    base = prose(1, 300)
    words = base.split()
    edited = " ".join(words[:100] + ["changed"] + words[101:200] + ["edited"] + words[201:])
    docs = [base, prose(2, 300), edited, prose(3, 300)]
    assert corpus.near_duplicates(docs) == {2: 0}  # the edited copy, matched to the original
    assert corpus.near_duplicates([edited, prose(4, 300)], reference=[prose(2, 300), base]) == {0: -1}  # reference[-1]


def test_toxicity_rule_drops_abuse_and_keeps_archaic_prose():
    clean = "The committee met on Tuesday and agreed on the budget for the new library.\n\n" * 12
    abusive = "You are a fucking idiot and a worthless piece of shit.\n\n" * 6 + clean
    verses = "\n".join(f"{i} And he went his way, and the people followed him into the city." for i in range(1, 30))
    archaic = verses[:1200] + "\nAnd the ass saw the angel, and the ass turned aside.\n" + verses[1200:]
    flagged, counts = corpus.toxic_counts([clean, abusive, archaic])
    assert flagged[0] == 0 and flagged[1] >= 3
    assert [corpus.is_toxic(f, n) for f, n in zip(flagged, counts)] == [False, True, False]
    assert corpus.is_toxic(1, 1) and corpus.is_toxic(3, 20) and not corpus.is_toxic(2, 7) and not corpus.is_toxic(3, 40)


def test_split_is_by_document_and_deterministic():
    import random
    docs = [dict(id=f"big/doc{i}", source="big") for i in range(5000)]
    docs += [dict(id=f"small/doc{i}", source="small") for i in range(30)]
    docs += [dict(id=f"tiny/doc{i}", source="tiny") for i in range(5)]
    val = corpus.val_ids(docs)
    random.Random(0).shuffle(docs)
    assert corpus.val_ids(docs) == val  # a function of the ids only
    big = {i for i in val if i.startswith("big/")}
    assert big == {d["id"] for d in docs if d["source"] == "big" and corpus.id_fraction(d["id"]) < corpus.VAL_FRACTION}
    assert 0.5 * corpus.VAL_FRACTION < len(big) / 5000 < 1.5 * corpus.VAL_FRACTION
    assert len({i for i in val if i.startswith("small/")}) == corpus.MIN_VAL_DOCS  # topped up
    assert len({i for i in val if i.startswith("tiny/")}) <= 1  # too small to top up


# ----------------------------------------------------------------------------- build

def fake_sources(monkeypatch, train_docs, heldout_docs, extra_code=()):
    modules = [(f"m{i}.py", code(i)) for i in range(30)] + list(extra_code)
    monkeypatch.setattr(S, "SOURCES", [
        S.Source("fake-prose", "text", (), lambda dirs: iter(train_docs)),
        S.Source("fake-code", "code", (), lambda dirs: iter(modules))])
    monkeypatch.setattr(S, "HELDOUT", S.Source("fake-heldout", "code", (), lambda dirs: iter(heldout_docs)))


def test_build_filters_splits_and_writes_manifest(tmp_path, monkeypatch):
    docs = [(f"d{i}", prose(i)) for i in range(200)]
    docs += [("dup", prose(5)), ("short", "too short"), ("latin1", prose(998).encode("latin-1") + b" caf\xe9"),
             ("toxic", "you are a fucking idiot and a piece of shit.\n\n" * 5 + prose(999)),
             ("near", " ".join(prose(7).split()[:-1]) + " changed.")]
    held = [("h0.py", code(0)),  # the same text as a training module: must go
            ("h1.py", "def g(y):\n    '''held out'''\n    return y - 1\n" * 20),
            ("h2.py", code(5, 6, 7, 8) + "\n"),  # nearly the training module big.py
            ("h3.py", code(5, 6, 7, 8) + "\nprint(1)\n")]
    fake_sources(monkeypatch, docs, held, extra_code=[("big.py", code(5, 6, 7, 8) + "\n\n# end\n")])
    man = corpus.build(tmp_path / "c", cache=tmp_path / "cache", **QUIET)
    dropped = man["filters"]["dropped"]
    assert dropped["fake-prose"] == {"exact_duplicate": 1, "too_short": 1, "toxic": 1, "near_duplicate": 1}
    assert dropped["fake-heldout"] == {"in_training": 1, "near_duplicate_of_training": 2}
    rows = {r["name"]: r for r in man["sources"]}
    assert rows["fake-prose"]["latin1_fallback_docs"] == 1 and rows["fake-prose"]["docs_raw"] == 205
    assert rows["fake-prose"]["toxic_examples"] == ["fake-prose/toxic"]
    assert rows["fake-prose"]["near_duplicate_examples"] == ["fake-prose/near ~ fake-prose/d7"]
    assert rows["fake-heldout"]["role"] == "heldout" and rows["fake-code"]["role"] == "train"
    for r in rows.values():
        assert r["bytes_raw"] >= r["bytes_kept"] > 0 and r["docs_raw"] >= r["docs_kept"] > 0
    assert man["filters"]["toxicity"]["min_flagged"] == corpus.TOXIC_MIN_FLAGGED

    train = list(corpus.iter_docs(tmp_path / "c" / "train.jsonl"))
    val = list(corpus.iter_docs(tmp_path / "c" / "val.jsonl"))
    held_out = list(corpus.iter_docs(tmp_path / "c" / "heldout_code.jsonl"))
    assert len(train) + len(val) == 201 + 31 and 0 < len(val) < 20
    assert {d["id"] for d in held_out} == {"fake-heldout/h1.py"}
    assert not {d["text"] for d in held_out} & {d["text"] for d in train + val}
    assert all(set(d) == {"id", "source", "kind", "text"} for d in train + val + held_out)
    assert {d["kind"] for d in held_out} == {"code"} and {d["kind"] for d in train} == {"text", "code"}
    assert "caf\u00e9" in next(d["text"] for d in train + val if d["id"] == "fake-prose/latin1")
    assert set(man["outputs"]) == {"train.jsonl", "val.jsonl", "heldout_code.jsonl"}
    for name, digest in man["outputs"].items():
        assert sha256_file(tmp_path / "c" / name) == digest
    assert man["splits"]["train"] == dict(docs=len(train), bytes=sum(len(d["text"].encode()) for d in train))
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == sorted(list(man["outputs"]) + ["manifest.json"])
    # deterministic split by document, and a second build is skipped
    assert corpus.build(tmp_path / "c", cache=tmp_path / "cache", **QUIET)["created"] == man["created"]
    man2 = corpus.build(tmp_path / "c2", cache=tmp_path / "cache", **QUIET)
    assert man2["outputs"] == man["outputs"]
    # a damaged output is noticed and rebuilt
    (tmp_path / "c" / "val.jsonl").write_text("")
    assert corpus.build(tmp_path / "c", cache=tmp_path / "cache", **QUIET)["outputs"] == man["outputs"]


def test_a_failed_build_leaves_the_previous_outputs_untouched(tmp_path, monkeypatch):
    fake_sources(monkeypatch, [(f"d{i}", prose(i)) for i in range(50)], [("h.py", "def h():\n    pass\n" * 30)])
    corpus.build(tmp_path / "c", cache=tmp_path, **QUIET)
    before = {p.name: p.read_bytes() for p in (tmp_path / "c").iterdir()}

    def broken(dirs):
        yield "ok", prose(1)
        raise RuntimeError("extractor failed half way")
    monkeypatch.setattr(S, "SOURCES", S.SOURCES + [S.Source("broken", "text", (), broken)])
    with pytest.raises(RuntimeError, match="half way"):
        corpus.build(tmp_path / "c", cache=tmp_path, force=True, **QUIET)
    assert {p.name: p.read_bytes() for p in (tmp_path / "c").iterdir()} == before  # no temp files, nothing changed


def test_extra_local_text_and_jsonl(tmp_path, monkeypatch, capsys):
    fake_sources(monkeypatch, [], [])
    (tmp_path / "notes.txt").write_text(prose(7, 100))
    with open(tmp_path / "more.jsonl", "w") as f:
        for i in range(3):
            f.write(json.dumps({"id": f"row{i}", "text": prose(100 + i, 100)}) + "\n")
    (tmp_path / "dir" / "sub").mkdir(parents=True)
    (tmp_path / "dir" / "a.txt").write_text(prose(50, 100))
    (tmp_path / "dir" / "sub" / "b.txt").write_bytes(prose(51, 100).encode() + b" na\xefve")  # latin-1
    (tmp_path / "dir" / "skip.md").write_text(prose(52, 100))
    parser = argparse.ArgumentParser()
    corpus.add_args(parser)
    args = parser.parse_args(["--out", str(tmp_path / "c"), "--cache", str(tmp_path), "--add", str(tmp_path / "notes.txt"),
                              "--add", str(tmp_path / "more.jsonl"), "--add", str(tmp_path / "dir")])
    man = corpus.main(args)
    rows = {r["name"]: r for r in man["sources"]}
    assert rows["extra0"]["docs_kept"] == 1 and rows["extra1"]["docs_kept"] == 3 and rows["extra2"]["docs_kept"] == 2
    assert rows["extra2"]["latin1_fallback_docs"] == 1 and rows["extra0"]["sha256"] == sha256_file(tmp_path / "notes.txt")
    docs = {d["id"]: d for f in ("train", "val") for d in corpus.iter_docs(tmp_path / "c" / f"{f}.jsonl")}
    assert {"extra0/notes.txt", "extra1/row0", "extra2/a.txt", "extra2/sub/b.txt"} <= set(docs)
    assert docs["extra1/row2"]["text"] == prose(102, 100) + "\n" and docs["extra1/row2"]["kind"] == "text"
    out = capsys.readouterr().out
    assert "extra1" in out and "splits: train" in out
    # a changed extra file makes the next build rebuild instead of skipping
    (tmp_path / "notes.txt").write_text(prose(8, 100))
    man2 = corpus.main(args)
    rows2 = {r["name"]: r for r in man2["sources"]}
    assert rows2["extra0"]["sha256"] != rows["extra0"]["sha256"] and man2["outputs"] != man["outputs"]

    with open(tmp_path / "bad.jsonl", "w") as f:
        f.write(json.dumps({"content": "no text field"}) + "\n")
    with pytest.raises(ValueError, match="no \"text\" field"):
        corpus.build(tmp_path / "c3", cache=tmp_path, extra=[str(tmp_path / "bad.jsonl")], **QUIET)
    with pytest.raises(FileNotFoundError):
        list(corpus.load_extra(str(tmp_path / "missing.txt")))


def test_unknown_source_name_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown sources"):
        corpus.build(tmp_path, sources=["nope"])


def test_stdlib_code_set_has_no_tests_and_a_stable_fingerprint():
    names = [n for n, _ in S.stdlib([])]
    assert "os.py" in names and "json/decoder.py" in names
    assert not [n for n in names if {"test", "tests", "idle_test", "site-packages"} & set(n.split("/")[:-1])]
    assert corpus.stdlib_fingerprint() == corpus.stdlib_fingerprint()


@pytest.mark.network
def test_real_fetch_of_the_bible(tmp_path):
    (bible,) = [s for s in S.SOURCES if s.name == "bible"]
    docs = dict(bible.documents(tmp_path))
    assert len(docs) == 1189  # chapters of the KJV
    assert b"1 In the beginning God created the heaven and the earth." in docs["Ge 1"]
    assert docs["Rev 22"].rstrip().endswith(b"The grace of our Lord Jesus Christ be with you all. Amen.")
    assert (tmp_path / "packages" / "bible-kjv-text_4.38_all.deb").exists()


def test_extra_parquet_and_hugging_face_datasets_on_local_files(tmp_path, monkeypatch):
    pa = pytest.importorskip("pyarrow")
    pytest.importorskip("datasets")
    import pyarrow.parquet as pq
    fake_sources(monkeypatch, [], [])
    pq.write_table(pa.table({"text": [prose(200 + i, 100) for i in range(4)]}), tmp_path / "p.parquet")
    hf_dir = tmp_path / "hf_local"
    hf_dir.mkdir()
    with open(hf_dir / "train.jsonl", "w") as f:
        for i in range(5):
            f.write(json.dumps({"text": prose(300 + i, 100), "meta": i}) + "\n")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    man = corpus.build(tmp_path / "c", cache=tmp_path, extra=[str(tmp_path / "p.parquet"), f"hf:{hf_dir}"], **QUIET)
    rows = {r["name"]: r for r in man["sources"]}
    assert rows["extra0"]["docs_kept"] == 4 and rows["extra1"]["docs_kept"] == 5


def test_a_changed_hugging_face_extra_triggers_a_rebuild(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    fake_sources(monkeypatch, [], [])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    hf_dir = tmp_path / "hf_local"
    hf_dir.mkdir()

    def write(seed):
        (hf_dir / "train.jsonl").write_text("".join(json.dumps({"text": prose(seed + i, 100)}) + "\n" for i in range(5)))
    write(300)
    man = corpus.build(tmp_path / "c", cache=tmp_path, extra=[f"hf:{hf_dir}"], **QUIET)
    assert corpus.build(tmp_path / "c", cache=tmp_path, extra=[f"hf:{hf_dir}"], **QUIET)["created"] == man["created"]
    write(400)  # a new version of the local dataset: same spec string, other content
    man2 = corpus.build(tmp_path / "c", cache=tmp_path, extra=[f"hf:{hf_dir}"], **QUIET)
    texts = {d["text"] for f in ("train", "val") for d in corpus.iter_docs(tmp_path / "c" / f"{f}.jsonl")}
    assert man2["outputs"] != man["outputs"] and prose(400, 100) + "\n" in texts and prose(300, 100) + "\n" not in texts
    assert man2["request"]["extra"][0][1] != man["request"]["extra"][0][1]
