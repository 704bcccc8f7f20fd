"""Decode throughput of the engine beside the naive loop it replaced, in one run on one model.

  python bench/decode.py [--run runs/default/pretrain] [--tokens 128] [--json out.json]

- naive: the old `GPT.generate` logic kept here as the baseline: batch 1, KV cache, fp32 eager, a token tensor
  concatenated per step, top-k + multinomial sampling.
- engine, single stream: one request at a time through `nanogpt4.engine.Engine`, as a server would run it: the
  weights in bfloat16 (--dtype) and the decode step compiled (--compile; compile time is reported, not timed).
- engine, 8 / 32 staggered concurrent requests: requests arrive at different times (a new one every few decode
  steps' worth of time) and join the running batch; aggregate generated tokens/s over the whole window, time to
  first token and inter-token latency p50/p99 per request.
Every request asks for exactly --tokens new tokens (stop tokens off), so all modes generate the same amount.
"""
import argparse
import copy
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from nanogpt4.perf import CPU_DTYPE  # noqa: E402
from nanogpt4 import runs  # noqa: E402
from nanogpt4.engine import Engine, SamplingParams, prompt_ids  # noqa: E402
from nanogpt4.model.gpt import KVCache  # noqa: E402

PROMPT = "It was the best of times, it was the worst of times, it was the age of wisdom,"


@torch.no_grad()
def naive(model, ids, n_new, temperature=0.8, top_k=50, seed=0):
    """Yesterday's GPT.generate at batch 1: prefill, then one cached forward per token."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.tensor([ids])
    cache = KVCache(model.cfg, 1, len(ids) + n_new)
    seq = idx
    logits = model(idx, cache=cache)[:, -1]
    out = []
    for _ in range(n_new):
        logits = logits.float() / temperature
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
        nxt = torch.multinomial(F.softmax(logits, -1), 1, generator=g).squeeze(1)
        out.append(int(nxt))
        seq = torch.cat([seq, nxt[:, None]], dim=1)
        logits = model(nxt[:, None], cache=cache)[:, -1]
    return out


def params(n_new, seed):
    return SamplingParams(max_tokens=n_new, temperature=0.8, top_k=50, seed=seed)


def staggered(eng, ids, n_req, n_new, gap_s):
    """n_req requests, the i-th submitted at i·gap_s; returns aggregate tok/s and per-token latencies."""
    ttft, itl, threads, t0 = [], [], [], time.perf_counter() + 0.05  # by then this thread serves (below)
    lock = threading.Lock()

    def client(i):  # submits at its arrival time, then waits (no polling: the serving thread has the GIL)
        time.sleep(max(0.0, t0 + i * gap_s - time.perf_counter()))
        req = eng.submit(ids, params(n_new, i))
        c = req.result().choices[0]
        with lock:
            ttft.append(c.times[0] - req.submitted)
            itl.extend(np.diff(c.times).tolist())

    for i in range(n_req):
        threads.append(threading.Thread(target=client, args=(i,)))
        threads[-1].start()
    eng.serve(until=lambda: not any(t.is_alive() for t in threads))  # the engine's loop on this thread
    for t in threads:
        t.join()
    secs = time.perf_counter() - t0  # from the first arrival to the last token
    return dict(requests=n_req, tok_s=n_req * n_new / secs, seconds=secs, ttft_p50_ms=1e3 * np.median(ttft),
                itl_p50_ms=1e3 * np.percentile(itl, 50), itl_p99_ms=1e3 * np.percentile(itl, 99))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/default/pretrain", help="run directory (the main job's base model)")
    ap.add_argument("--tokens", type=int, default=128, help="new tokens per request")
    ap.add_argument("--repeats", type=int, default=5, help="single-stream repeats (best taken)")
    ap.add_argument("--dtype", default=CPU_DTYPE, choices=["bfloat16", "float32"],
                    help="the engine's weights (default: perf.fast_dtype, what the compiled server uses)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                    help="compile the engine's decode step (torch.compile)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    run = runs.load(args.run, device="cpu")
    model, tok = run.model, run.tok
    ids, _ = prompt_ids(tok, PROMPT)
    n = args.tokens
    print(f"model {args.run} ({run.checkpoint_id[:20]}…): {model.num_params() / 1e6:.2f}M params, "
          f"prompt {len(ids)} tokens, {n} new tokens per request, {torch.get_num_threads()} threads")
    res = {}

    fast = copy.deepcopy(model).to(getattr(torch, args.dtype))
    eng = Engine(fast, tok, max_rows=32, stop_ids=(), compile=args.compile)
    t = time.perf_counter()
    eng.generate([ids], params(8, 0))  # warm-up: compiles the decode step
    eng.generate([ids, ids[:5]], params(8, 0))
    eng.generate([ids[:7]], params(8, 0))
    res["engine_warmup_s"] = time.perf_counter() - t
    eng.stats.update({k: 0 for k in eng.stats})  # the per-step figures below are of the measured runs only
    naive(model, ids, 8)  # warm-up
    # everything computes on this (the main) thread: generate() runs the engine's loop in its caller, and the
    # staggered clients below only submit while this thread serves. The two single-stream measurements
    # alternate so that machine noise hits both alike; best of --repeats each.
    naive_s, single_s = [], []
    for _ in range(args.repeats):
        naive_s.append(_timed(lambda: naive(model, ids, n)))
        single_s.append(_timed(lambda: eng.generate([ids], params(n, 0))))
    res["naive_batch1"] = dict(tok_s=n / min(naive_s))
    res["engine_single"] = dict(tok_s=n / min(single_s))
    best = min(single_s)
    one_step = best / n
    st = dict(eng.stats)
    print(f"single stream: {1e3 * st['forward_s'] / st['decode_steps']:.2f} ms forward + "
          f"{1e3 * st['sample_s'] / st['decode_steps']:.2f} ms sampling per decode step")
    for k in (1, 8, 32):  # a new request every two single-stream steps: they arrive while others decode
        res[f"engine_staggered_{k}"] = staggered(eng, ids, k, n, gap_s=2 * one_step)
    res["engine_stats"] = dict(eng.stats)

    print(f"{'mode':<26}{'tok/s':>10}{'TTFT p50 ms':>14}{'ITL p50 ms':>12}{'ITL p99 ms':>12}")
    for name, r in res.items():
        if not isinstance(r, dict) or "tok_s" not in r:
            continue
        print(f"{name:<26}{r['tok_s']:>10.0f}" + "".join(f"{r[k]:>{w}.1f}" if k in r else " " * w for k, w in
                                                         (("ttft_p50_ms", 14), ("itl_p50_ms", 12), ("itl_p99_ms", 12))))
    s, nv, c32 = res["engine_single"]["tok_s"], res["naive_batch1"]["tok_s"], res["engine_staggered_32"]["tok_s"]
    print(f"engine single-stream / naive batch 1: {s / nv:.2f}x (bar ≥ 2x)")
    print(f"32 staggered / engine single-stream: {c32 / s:.2f}x (bar ≥ 8x)")
    print(f"engine: {args.dtype}, compiled decode step: {args.compile} (warm-up incl. compilation "
          f"{res['engine_warmup_s']:.1f} s)")
    res.update(model=args.run, checkpoint=run.checkpoint_id, tokens_per_request=n, threads=torch.get_num_threads(),
               dtype=args.dtype, compile=args.compile, ratio_single_vs_naive=s / nv, ratio_32_vs_single=c32 / s)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
