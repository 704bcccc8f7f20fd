"""Corpus tests: pinned-package verification, normalisation, dedup, the safety filter, splits, the manifest,
extra local data, and one real fetch from Debian."""
import json

import pytest

from nanogpt4.data import corpus, sources as S


def prose(seed, n=60):
    import random
    rng = random.Random(seed)
    words = "river stone light green house morning letter window garden silver quiet road music winter".split()
    return " ".join(rng.choice(words) for _ in range(n)) + "."


def test_wrong_sha256_is_a_clear_error_naming_the_package(tmp_path, monkeypatch):
    def fake_download(self, dest):
        (dest / self.filename).write_bytes(b"not what was pinned")
    monkeypatch.setattr(S.Package, "download", fake_download)
    pkg = S.Package("npm", "some-pkg", "1.2.3", "0" * 64, "some-pkg-1.2.3.tgz")
    with pytest.raises(S.FetchError, match="some-pkg 1.2.3: sha256 .* does not match"):
        pkg.fetch(tmp_path)
    assert not (tmp_path / "packages" / "some-pkg-1.2.3.tgz").exists()  # the bad file is not kept


def test_failed_download_is_a_clear_error(tmp_path):
    pkg = S.Package("pypi", "nanogpt4-no-such-package-xyz", "0.0.1", "0" * 64, "x.tar.gz", sdist=True)
    with pytest.raises(S.FetchError, match="nanogpt4-no-such-package-xyz==0.0.1: download failed"):
        pkg.fetch(tmp_path)


def test_normalize():
    assert corpus.normalize("a\r\nb  \r\n\n\n\n\n\nc\x00\x07") == "a\nb\n\n\nc\n"
    assert corpus.normalize("e\u0301") == "\u00e9\n"  # NFC


def test_near_duplicates_found_and_distinct_docs_kept():
    base = prose(1, 300)
    words = base.split()
    edited = " ".join(words[:100] + ["changed"] + words[101:200] + ["edited"] + words[201:])
    docs = [base, prose(2, 300), edited, prose(3, 300)]
    assert corpus.near_duplicates(docs) == {2}


def fake_sources(monkeypatch, train_docs, heldout_docs):
    monkeypatch.setattr(S, "SOURCES", [
        S.Source("fake-prose", "text", (), lambda dirs: iter(train_docs)),
        S.Source("fake-code", "code", (), lambda dirs: iter([(f"m{i}.py", f"def f{i}(x):\n    return x * {i}\n" * 20)
                                                              for i in range(30)]))])
    monkeypatch.setattr(S, "HELDOUT", S.Source("fake-heldout", "code", (), lambda dirs: iter(heldout_docs)))


def test_build_filters_splits_and_writes_manifest(tmp_path, monkeypatch):
    docs = [(f"d{i}", prose(i)) for i in range(200)]
    docs += [("dup", prose(5)), ("short", "too short"),
             ("toxic", "you are a fucking idiot and a piece of shit.\n\n" * 5 + prose(999))]
    held = [("h0.py", f"def f{0}(x):\n    return x * {0}\n" * 20),  # same text as a training doc: must be dropped
            ("h1.py", "def g(y):\n    '''held out'''\n    return y - 1\n" * 20)]
    fake_sources(monkeypatch, docs, held)
    man = corpus.build(tmp_path / "c", cache=tmp_path / "cache", log=lambda *a: None)
    dropped = man["filters"]["dropped"]
    assert dropped["fake-prose"] == {"exact_duplicate": 1, "too_short": 1, "toxic": 1}
    assert dropped["fake-heldout"] == {"exact_duplicate": 1}
    train = list(corpus.iter_docs(tmp_path / "c" / "train.jsonl"))
    val = list(corpus.iter_docs(tmp_path / "c" / "val.jsonl"))
    held_out = list(corpus.iter_docs(tmp_path / "c" / "heldout_code.jsonl"))
    assert len(train) + len(val) == 200 + 30 and 0 < len(val) < 20
    assert {d["id"] for d in held_out} == {"fake-heldout/h1.py"}
    assert not {d["text"] for d in held_out} & {d["text"] for d in train + val}
    assert all(set(d) == {"id", "source", "kind", "text"} for d in train)
    for name, digest in man["outputs"].items():
        from nanogpt4.common import sha256_file
        assert sha256_file(tmp_path / "c" / name) == digest
    assert man["splits"]["train"]["docs"] == len(train)
    # deterministic split by document, and a second build is skipped
    assert corpus.build(tmp_path / "c", cache=tmp_path / "cache", log=lambda *a: None)["created"] == man["created"]
    man2 = corpus.build(tmp_path / "c2", cache=tmp_path / "cache", log=lambda *a: None)
    assert man2["outputs"] == man["outputs"]
    # a damaged output is noticed and rebuilt
    (tmp_path / "c" / "val.jsonl").write_text("")
    assert corpus.build(tmp_path / "c", cache=tmp_path / "cache", log=lambda *a: None)["outputs"] == man["outputs"]


def test_extra_local_text_and_jsonl(tmp_path, monkeypatch):
    fake_sources(monkeypatch, [], [])
    (tmp_path / "notes.txt").write_text(prose(7, 100))
    with open(tmp_path / "more.jsonl", "w") as f:
        for i in range(3):
            f.write(json.dumps({"id": f"row{i}", "text": prose(100 + i, 100)}) + "\n")
    man = corpus.build(tmp_path / "c", cache=tmp_path, extra=[str(tmp_path / "notes.txt"), str(tmp_path / "more.jsonl")],
                       log=lambda *a: None)
    rows = {r["name"]: r for r in man["sources"]}
    assert rows["extra0"]["docs_kept"] == 1 and rows["extra1"]["docs_kept"] == 3
    with open(tmp_path / "bad.jsonl", "w") as f:
        f.write(json.dumps({"content": "no text field"}) + "\n")
    with pytest.raises(ValueError, match="no \"text\" field"):
        corpus.build(tmp_path / "c3", cache=tmp_path, extra=[str(tmp_path / "bad.jsonl")], log=lambda *a: None)
    with pytest.raises(FileNotFoundError):
        list(corpus.load_extra(str(tmp_path / "missing.txt")))


def test_unknown_source_name_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown sources"):
        corpus.build(tmp_path, sources=["nope"])


@pytest.mark.network
def test_real_fetch_of_the_bible(tmp_path):
    (bible,) = [s for s in S.SOURCES if s.name == "bible"]
    docs = dict(bible.documents(tmp_path))
    assert len(docs) == 1189  # chapters of the KJV
    assert "1 In the beginning God created the heaven and the earth." in docs["Ge 1"]


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
    man = corpus.build(tmp_path / "c", cache=tmp_path, extra=[str(tmp_path / "p.parquet"), f"hf:{hf_dir}"],
                       log=lambda *a: None)
    rows = {r["name"]: r for r in man["sources"]}
    assert rows["extra0"]["docs_kept"] == 4 and rows["extra1"]["docs_kept"] == 5
