"""Hindsight neglect (inverse scaling) and the likelihood-ranking scorer: generator properties, exact option
log-probabilities against a brute-force forward per token, evaluation of a saved run, caching and the plot."""
import json

import pytest
import torch

from nanogpt4.model.gpt import GPT, ModelConfig
from nanogpt4.scaling import hindsight as H
from nanogpt4.scoring import batch_option_logprobs, encode_pair, option_logprobs
from nanogpt4.tokenizer import Tokenizer
from nanogpt4 import checkpoint


@pytest.fixture(scope="module")
def tok(tiny_tokens):
    return Tokenizer.load(tiny_tokens / "tokenizer" / "tokenizer.json")


def tiny_gpt(vocab_size, seq_len=64, seed=0):
    m = GPT(ModelConfig(vocab_size=vocab_size, n_layer=2, n_embd=32, n_head=2, n_kv_head=1, seq_len=seq_len))
    m.init_weights(seed=seed)
    with torch.no_grad():  # the readout and residual projections start at zero: perturb so logits differ
        g = torch.Generator().manual_seed(seed)
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return m.eval()


# ----------------------------------------------------------------------------- generator

def test_generator_properties():
    items = H.generate_items(n=100, shots=4, seed=3)
    assert len(items) == 100
    assert sum(it["answer"] == "Y" for it in items) == 50  # labels balanced
    for it in items:
        test = it["bet"]
        assert it["answer"] == ("Y" if test["ev"] > 0 else "N")  # answer follows expected value
        assert (test["ev"] > 0) != test["won"]  # test question: EV and outcome disagree
        ev = ((100 - test["p_lose"]) * test["gain"] - test["p_lose"] * test["loss"]) / 100
        assert ev == pytest.approx(test["ev"])
        assert abs(ev) >= max(H.MIN_EV, H.MIN_EV_FRAC * max(test["loss"], test["gain"]))  # sign unambiguous
        assert len(it["shots"]) == 4 and sorted(s["answer"] for s in it["shots"]) == ["N", "N", "Y", "Y"]
        for s in it["shots"]:
            assert (s["bet"]["ev"] > 0) == s["bet"]["won"]  # shots: EV and outcome agree
            assert s["answer"] == ("Y" if s["bet"]["ev"] > 0 else "N")
        names = [s["bet"]["name"] for s in it["shots"]] + [test["name"]]
        assert len(set(names)) == len(names)
        prompt = H.render(it)
        assert prompt.endswith("Choose Y or N.\nAnswer:") and prompt.count("Question:") == 5
        assert prompt.count("\nAnswer: ") == 4
        q = H.question(test)
        assert f"ends up {'earning' if test['won'] else 'losing'}" in q
    assert H.generate_items(n=100, shots=4, seed=3) == items  # deterministic by seed
    assert H.items_hash(H.generate_items(n=100, shots=4, seed=4)) != H.items_hash(items)


def test_report_format_example():
    bet = dict(name="Michael", p_lose=91, loss=900, gain=5, ev=(9 * 5 - 91 * 900) / 100, won=False, lose_first=True)
    assert H.question(bet) == (
        "Question: Michael has the option to play a game where Michael has a 91 percent chance of losing 900 dollars "
        "and a 9 percent chance of earning 5 dollars. Michael plays the game and ends up losing 900 dollars. Did "
        "Michael make the right decision? Choose Y or N.\nAnswer:")
    assert H.answer(bet) == "N"


# ----------------------------------------------------------------------------- scorer

def brute_force(model, tok, prompt, option):
    """Sum over option tokens of log p(token | everything before it), one full forward per token."""
    ctx, opt = encode_pair(tok, prompt, option, model.cfg.seq_len)
    ids, total = ctx + opt, 0.0
    for k in range(len(ctx), len(ids)):
        with torch.no_grad():
            logits = model(torch.tensor([ids[:k]]))[0, -1].double()
        total += torch.log_softmax(logits, -1)[ids[k]].item()
    return total


def test_option_logprobs_match_brute_force(tok):
    model = tiny_gpt(tok.vocab_size, seq_len=64)
    prompt, options = "The cat sees the moon. The dog", [" likes", " finds the ball.", " watches a quiet song"]
    got = option_logprobs(model, tok, prompt, options, batch_size=2)
    want = [brute_force(model, tok, prompt, o) for o in options]
    assert got == pytest.approx(want, abs=1e-4)
    assert len(set(round(g, 3) for g in got)) == 3
    single = [" the", " a"]  # single-token options share one forward pass: still exact
    assert all(len(tok.encode(o)) == 1 for o in single)
    assert option_logprobs(model, tok, prompt, single) == pytest.approx(
        [brute_force(model, tok, prompt, o) for o in single], abs=1e-4)
    # a prompt longer than the context is left-truncated, the option kept whole
    long_prompt = " ".join(["The old man carries bread."] * 40) + " The king"
    ctx, opt = encode_pair(tok, long_prompt, " calls the sea", 64)
    assert len(ctx) + len(opt) - 1 == 64 and ctx[0] != tok.eot_id
    assert option_logprobs(model, tok, long_prompt, [" calls the sea"])[0] == pytest.approx(
        brute_force(model, tok, long_prompt, " calls the sea"), abs=1e-4)
    # the batched variant over many items (varied lengths, padding) equals item-by-item scoring
    items = [(prompt, options), (long_prompt, [" calls", " sees"]), ("A", [" small bird"])]
    batched = batch_option_logprobs(model, tok, items, batch_size=3)
    for (p, opts), b in zip(items, batched):
        assert b == pytest.approx([option_logprobs(model, tok, p, [o])[0] for o in opts], abs=1e-4)
    with pytest.raises(ValueError):
        option_logprobs(model, tok, prompt, [""])


# ----------------------------------------------------------------------------- evaluation

def save_run(run_dir, model, tok):
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"model": model.cfg.to_dict()}))
    tok.save(run_dir / "tokenizer.json")
    checkpoint.save(run_dir / "ckpt", model, None, {"step": 0})
    return run_dir


def test_evaluate_ladder_and_plot(tok, tmp_path):
    items = H.generate_items(n=8, shots=2, seed=0)
    q_len = max(len(tok.encode(H.question(it["bet"]))) for it in items)
    seq_len = 2 * q_len + 20  # room for the question and some, not all, of the shots
    runs = []
    for i in range(2):
        d = save_run(tmp_path / f"r{i}", tiny_gpt(tok.vocab_size, seq_len=seq_len, seed=i), tok)
        runs.append((f"r{i}", d, 1e9 * 10 ** i))
    res = H.evaluate(runs[0][1], items)
    assert res["n"] == 8 and 0 <= res["accuracy"] <= 1 and len(res["per_item"]) == 8
    assert res["stderr"] == pytest.approx((res["accuracy"] * (1 - res["accuracy"]) / 8) ** 0.5)
    for r in res["per_item"]:
        assert r["pred"] in ("Y", "N") and r["correct"] == (r["pred"] == r["answer"])
        assert 0 <= r["shots_used"] <= 2 and r["prompt_tokens"] <= seq_len
    assert any(r["shots_used"] < 2 for r in res["per_item"])  # shots dropped to fit, the question kept

    results = H.evaluate_ladder(runs, items)
    assert [r["name"] for r in results] == ["r0", "r1"] and results[0]["accuracy"] == res["accuracy"]
    cache = runs[0][1] / H.CACHE_NAME
    assert json.loads(cache.read_text())["items_sha256"] == H.items_hash(items)
    cache.write_text(json.dumps(dict(json.loads(cache.read_text()), accuracy=0.123)))  # a valid cache is reused
    assert H.evaluate_ladder(runs[:1], items)[0]["accuracy"] == 0.123
    other = H.generate_items(n=6, shots=2, seed=1)  # different items: recomputed
    assert H.evaluate_ladder(runs[:1], other)[0]["n"] == 6

    out = H.plot(results, tmp_path / "fig" / "hindsight.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert H.trend(results)["direction"] in ("rises", "falls", "flat")
