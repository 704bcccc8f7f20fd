"""Contamination check (the report's three 50-character probes against an index of the normalised corpus) and
calibration (ECE, reliability diagram)."""
import json
import random

import numpy as np
import pytest

from nanogpt4.evals import calibration as CAL, contamination as K


def test_normalisation_and_probes():
    assert K.normalize("Hello, World! 42 times_") == "HelloWorld42times"
    assert K.probes("short one", random.Random(0)) == ["shortone"]
    ps = K.probes("x" * 30 + "".join(chr(97 + i % 26) for i in range(200)), random.Random(0))
    assert len(ps) == 3 and all(len(p) == 50 for p in ps)


def test_contaminated_items_are_found_and_clean_ones_are_not(tmp_path):
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "lambda", "theta", "zeta"]
    docs = [" ".join(rng.choice(words) + str(rng.randrange(1000)) for _ in range(300)) for _ in range(20)]
    corpus = tmp_path / "train.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    idx = K.CorpusIndex.load_or_build(corpus, tmp_path / "cache")
    assert (tmp_path / "cache").exists() and K.CorpusIndex.load_or_build(corpus, tmp_path / "cache").hashes.size
    planted = "Q: " + docs[3][500:900].upper().lower() + " ???"  # punctuation and spacing differ: still found
    fresh = " ".join(rng.choice(["nu", "xi", "rho"]) + str(rng.randrange(10 ** 6)) for _ in range(80))
    straddle = docs[1][-30:] + docs[2][:30]  # the two documents joined: in no single document
    tiny = "kappa"  # shorter than a probe: the whole item is looked up
    res = K.check(idx, {"planted": planted, "fresh": fresh, "straddle": straddle, "tiny": tiny, "empty": "!!"})
    assert res == {"planted": True, "fresh": False, "straddle": False, "tiny": True, "empty": False}
    h = K.window_hashes(K._codes("a" * 60))
    assert len(h) == 11 and len(set(h.tolist())) == 1  # equal windows hash equal


def test_the_index_cache_is_rebuilt_when_the_rule_changes(tmp_path, monkeypatch):
    corpus = tmp_path / "train.jsonl"
    corpus.write_text(json.dumps({"text": "Hello, World! " * 10}) + "\n")
    assert K.CorpusIndex.load_or_build(corpus, tmp_path / "cache").text.startswith("HelloWorld")

    def lower_alnum(text):
        return "".join(c for c in text.lower() if c.isalnum())
    monkeypatch.setattr(K, "normalize", lower_alnum)
    assert K.CorpusIndex.load_or_build(corpus, tmp_path / "cache").text.startswith("helloworld")
    monkeypatch.setattr(K, "WINDOW", 40)
    K.CorpusIndex.load_or_build(corpus, tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*/meta.json"))) == 3  # one index per (corpus, rule)


def test_calibration_error_and_plot(tmp_path):
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.25, 1, 4000)
    calibrated = rng.uniform(0, 1, 4000) < conf
    overconfident = rng.uniform(0, 1, 4000) < conf - 0.2
    assert CAL.reliability(conf, calibrated)[1] < 0.03
    assert CAL.reliability(conf, overconfident)[1] == pytest.approx(0.2, abs=0.03)
    p = CAL.option_probs([-1.0, -2.0, -3.0, -4.0])
    assert p.sum() == pytest.approx(1) and p.argmax() == 0
    CAL.plot({"base": (conf, calibrated), "post-trained": (conf, overconfident)}, tmp_path / "cal.png")
    assert (tmp_path / "cal.png").stat().st_size > 10_000
