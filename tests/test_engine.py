"""The generation engine: continuous batching equals one-at-a-time decoding, seeded requests ignore their batch
mates, log-probabilities are those of the sampling distribution, top-k / top-p / stop strings / stop tokens /
context limits / cancellation behave as documented."""
import shutil
import threading
import time

import pytest
import torch
import torch.nn.functional as F

from nanogpt4 import runs
from nanogpt4.engine import Cancelled, ContextLengthError, Engine, SamplingParams, prompt_ids


@pytest.fixture(scope="module")
def loaded(local_run):
    return runs.load(local_run, "cpu")


@pytest.fixture
def engine(loaded):
    eng = Engine(loaded.model, loaded.tok, max_rows=40)
    yield eng
    eng.close()


def prompts(tok, k):
    words = ["the cat", "a dog sees", "def add(x, y):\n", "my sister likes the moon", "the king"]
    return [prompt_ids(tok, " ".join(words[: 1 + i % 5]) + f" {i}")[0] for i in range(k)]


@torch.no_grad()
def reference_greedy(model, ids, n, stop_ids):
    """Greedy decoding without any cache: the full forward pass at every step."""
    seq, out = list(ids), []
    for _ in range(n):
        t = int(model(torch.tensor([seq]))[0, -1].argmax())
        out.append(t)
        seq.append(t)
        if t in stop_ids:
            break
    return out


def test_batched_greedy_equals_uncached_decoding(engine, loaded):
    ps = prompts(loaded.tok, 6)  # different lengths: rows at different positions in one batch
    outs = engine.generate(ps, SamplingParams(max_tokens=20, temperature=0))
    for ids, out in zip(ps, outs):
        assert out.choices[0].token_ids == reference_greedy(loaded.model, ids, 20, engine.stop_ids)
    assert engine.stats["decode_rows"] > engine.stats["decode_steps"]  # rows really were decoded together


def test_seeded_request_same_alone_and_among_32_staggered(engine, loaded):
    ids = prompts(loaded.tok, 1)[0]
    p = SamplingParams(max_tokens=30, temperature=1.0, top_k=40, top_p=0.95, seed=1234)
    alone = engine.generate([ids], p)[0].choices[0]
    others = prompts(loaded.tok, 32)
    reqs = []
    for i, o in enumerate(others):  # the others arrive over time; ours joins in the middle of them
        reqs.append(engine.submit(o, SamplingParams(max_tokens=30, temperature=1.0, seed=i)))
        if i == 16:
            mine = engine.submit(ids, p)
        time.sleep(0.002)
    together = mine.result().choices[0]
    for r in reqs:
        r.result()
    assert engine.stats["decode_rows"] / engine.stats["decode_steps"] > 8  # it really was inside a big batch
    assert together.token_ids == alone.token_ids and together.text == alone.text
    different_seed = engine.generate([ids], SamplingParams(max_tokens=30, temperature=1.0, top_k=40, top_p=0.95,
                                                           seed=99))[0].choices[0]
    assert different_seed.token_ids != alone.token_ids  # the test can fail: the seed matters


@torch.no_grad()
@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 20, 1.0), (1.3, 0, 0.8), (0.9, 10, 0.7)])
def test_logprobs_are_those_of_the_sampling_distribution(engine, loaded, temperature, top_k, top_p):
    ids = prompts(loaded.tok, 3)[2]
    c = engine.generate([ids], SamplingParams(max_tokens=15, temperature=temperature, top_k=top_k, top_p=top_p,
                                              seed=7, top_logprobs=5))[0].choices[0]
    logits = loaded.model(torch.tensor([ids + c.token_ids]))[0, len(ids) - 1:-1].float() / temperature
    V = logits.size(-1)
    for pos, (t, lp, top) in enumerate(zip(c.token_ids, c.logprobs, c.top_logprobs)):
        row = logits[pos].clone()
        if top_k:
            row[row < torch.topk(row, top_k).values[-1]] = float("-inf")
        probs = row.softmax(-1)
        order = probs.argsort(descending=True)
        mass_before = probs[order].cumsum(0) - probs[order]
        keep = torch.zeros(V, dtype=torch.bool)
        keep[order[mass_before < top_p]] = True
        want = F.log_softmax(row.masked_fill(~keep, float("-inf")), -1)
        assert keep[t], "sampled a token outside the top-k / top-p set"
        assert abs(want[t].item() - lp) < 1e-4
        best = torch.topk(want, 5)
        for i, v in zip(best.indices.tolist(), best.values.tolist()):
            if v > float("-inf"):
                assert abs(top[i] - v) < 1e-4


@torch.no_grad()
def test_top_k_samples_only_among_the_k_most_likely(engine, loaded):
    ids = prompts(loaded.tok, 2)[1]
    one = engine.generate([ids], SamplingParams(max_tokens=12, temperature=1.0, top_k=1, seed=3))[0].choices[0]
    assert one.token_ids == reference_greedy(loaded.model, ids, 12, engine.stop_ids)
    c = engine.generate([ids], SamplingParams(max_tokens=25, temperature=2.0, top_k=3, seed=5))[0].choices[0]
    logits = loaded.model(torch.tensor([ids + c.token_ids]))[0, len(ids) - 1:-1]
    for pos, t in enumerate(c.token_ids):
        assert t in torch.topk(logits[pos], 3).indices.tolist()
    wide = engine.generate([ids], SamplingParams(max_tokens=25, temperature=2.0, seed=5))[0].choices[0]
    logits = loaded.model(torch.tensor([ids + wide.token_ids]))[0, len(ids) - 1:-1]
    assert any(t not in torch.topk(logits[p], 3).indices.tolist() for p, t in enumerate(wide.token_ids))


def test_stop_string_cut_exactly_across_token_boundaries(engine, loaded):
    tok = loaded.tok
    ids = prompts(tok, 1)[0]
    free = engine.generate([ids], SamplingParams(max_tokens=30, temperature=0))[0].choices[0]
    pieces = [tok.decode([t]) for t in free.token_ids]
    i = next(i for i in range(3, len(pieces) - 1) if len(pieces[i]) >= 2 and pieces[i + 1])
    start = sum(map(len, pieces[:i])) + 1  # a stop string from inside token i to inside token i+1
    stop = free.text[start:start + len(pieces[i])]
    assert len(stop) >= 2
    req = engine.submit(ids, SamplingParams(max_tokens=30, temperature=0, stop=["\x00never", stop]))
    streamed = "".join(delta for _, delta in req.events())
    c = req.result().choices[0]
    assert c.text == free.text[:free.text.find(stop)] and c.finish_reason == "stop"
    assert streamed == c.text and stop not in streamed


def test_n_choices_max_tokens_and_finish_reasons(engine, loaded):
    ids = prompts(loaded.tok, 1)[0]
    out = engine.generate([ids], SamplingParams(max_tokens=9, temperature=1.0, n=4, seed=11))[0]
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    assert len({tuple(c.token_ids) for c in out.choices}) > 1  # the choices differ
    for c in out.choices:
        assert c.finish_reason in ("stop", "length")
        assert len(c.token_ids) == 9 or c.token_ids[-1] in engine.stop_ids
    end = loaded.tok.special("end")  # a stop token ends the answer: kept in token_ids, not in the text
    stopper = Engine(loaded.model, loaded.tok, stop_ids={out.choices[0].token_ids[2]})
    c = stopper.generate([ids], SamplingParams(max_tokens=9, temperature=1.0, n=4, seed=11))[0].choices[0]
    stopper.close()
    assert c.finish_reason == "stop" and c.token_ids == out.choices[0].token_ids[:3]
    assert c.text == loaded.tok.decode(c.token_ids[:2]) and end not in c.token_ids


def test_context_length_refused_before_any_work(engine, loaded):
    n_ctx = loaded.model.cfg.seq_len
    before = dict(engine.stats)
    with pytest.raises(ContextLengthError, match="maximum context length is 64"):
        engine.submit(list(range(10, 60)), SamplingParams(max_tokens=20))
    assert engine.stats == before and not engine.pending
    out = engine.generate([list(range(10, 60))], SamplingParams(max_tokens=n_ctx - 50, temperature=0))[0]
    assert len(out.choices[0].token_ids) <= n_ctx - 50  # exactly fills the context at most


def test_cancel_frees_the_row_and_spares_the_others(engine, loaded):
    ps = prompts(loaded.tok, 2)
    long = engine.submit(ps[0], SamplingParams(temperature=1.0, seed=1, max_tokens=50))
    other = engine.submit(ps[1], SamplingParams(temperature=0, max_tokens=20))
    while not long.out.choices[0].token_ids:
        time.sleep(0.001)
    long.cancel()
    with pytest.raises(Cancelled):
        long.result(timeout=10)
    assert long.out.choices[0].finish_reason == "cancelled" and len(long.out.choices[0].token_ids) < 50
    assert other.result(timeout=10).choices[0].token_ids == reference_greedy(loaded.model, ps[1], 20, engine.stop_ids)
    deadline = time.time() + 5
    while engine.rows and time.time() < deadline:
        time.sleep(0.001)
    assert not engine.rows


def test_requests_from_many_threads(engine, loaded):
    ps = prompts(loaded.tok, 12)
    results = [None] * len(ps)

    def client(i):
        results[i] = engine.generate([ps[i]], SamplingParams(max_tokens=10, temperature=0))[0]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(ps))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for ids, out in zip(ps, results):
        assert out.choices[0].token_ids == reference_greedy(loaded.model, ids, 10, engine.stop_ids)


def test_bad_parameters_are_refused(engine):
    for bad in (dict(temperature=-1), dict(top_p=0), dict(top_k=-2), dict(n=0), dict(max_tokens=0),
                dict(stop=[""]), dict(top_logprobs=21)):
        with pytest.raises(ValueError):
            engine.submit([1, 2, 3], SamplingParams(**bad))
    with pytest.raises(ValueError, match="empty prompt"):
        engine.submit([], SamplingParams())


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_engine_equals_eager(loaded):
    """The compiled decode step and prefill (dynamic batch and prompt length, a lone row padded) give the tokens
    of the eager path, for a lone request, a batch, and requests joining a running batch."""
    ps = prompts(loaded.tok, 5)
    eager = Engine(loaded.model, loaded.tok, max_rows=8)
    fast = Engine(loaded.model, loaded.tok, max_rows=8, compile=True)
    p = SamplingParams(max_tokens=12, temperature=0.9, top_k=20, seed=4)
    for group in ([ps[0]], ps[1:4], [ps[4], ps[0][:3]]):
        want = [o.choices[0].token_ids for o in eager.generate(group, p)]
        assert [o.choices[0].token_ids for o in fast.generate(group, p)] == want
    first = fast.submit(ps[2], SamplingParams(max_tokens=30, temperature=0))
    while len(first.out.choices[0].token_ids) < 3:  # the background loop has it running; these join it
        time.sleep(0.001)
    later = [fast.submit(q, SamplingParams(max_tokens=10, temperature=0)) for q in ps[:2]]
    assert first.result().choices[0].token_ids == reference_greedy(loaded.model, ps[2], 30, fast.stop_ids)
    for q, r in zip(ps[:2], later):
        assert r.result().choices[0].token_ids == reference_greedy(loaded.model, q, 10, fast.stop_ids)
    eager.close()
    fast.close()
