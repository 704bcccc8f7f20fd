"""Training throughput and MFU for three model sizes, beside this machine's measured matmul peaks.

    .venv/bin/python bench/pretrain.py [--tokens runs/default/tokenizer/tokens] [--depths 2,4,6] [--steps 30]

Runs the real training loop (`nanogpt4.train.pretrain.train`) for a few steps per size on the main job's token
shards (run `nanogpt4 run` or `nanogpt4 tokenizer` first), autocast in perf.fast_dtype (bf16 where the CPU has bf16 arithmetic) + torch.compile by default, and reads
tokens/s and MFU from each run's metrics.jsonl, skipping the first logging interval (compilation).
Re-executes itself under tcmalloc when it is installed, as the CLI does.
"""
import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from nanogpt4 import config as C
from nanogpt4.cli import use_tcmalloc
from nanogpt4.perf import measure_matmul_peak, training_dtype
from nanogpt4.train import pretrain


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", default="runs/default/tokenizer/tokens")
    p.add_argument("--depths", default="2,4,6")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-seqs", type=int, default=64)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--dtype", default=training_dtype(), choices=("bfloat16", "float32"))
    args = p.parse_args()
    tokens = Path(args.tokens)
    if not (tokens / "meta.json").exists():
        raise SystemExit(f"no token shards at {tokens}: run `nanogpt4 run` (or `nanogpt4 tokenizer`) first")
    vocab = json.loads((tokens / "meta.json").read_text())["vocab_size"]
    peaks = {dt: measure_matmul_peak(dtype=getattr(torch, dt), seconds=3) for dt in ("bfloat16", "float32")}
    print(f"measured matmul peak (2048³, median): bf16 {peaks['bfloat16']:.0f} GFLOP/s, "
          f"fp32 {peaks['float32']:.0f} GFLOP/s, {torch.get_num_threads()} threads")
    print(f"{'depth':>5} {'params':>8} {'tok/s':>8} {'GFLOP/s':>8} {'MFU vs bf16 peak':>17} {'vs fp32 peak':>13}")
    rows = []
    for depth in map(int, args.depths.split(",")):
        tc = C.TrainConfig(depth=depth, vocab_size=vocab, batch_tokens=args.batch_seqs * 256, micro_batch=args.batch_seqs,
                           max_tokens=args.steps * args.batch_seqs * 256, eval_every=10 ** 9, ckpt_every=10 ** 9,
                           eval_tokens=256, compile=not args.no_compile, dtype=args.dtype, warmup_frac=0.1)
        with tempfile.TemporaryDirectory() as run:
            pretrain.train(tc, run, tokens, quiet=True)
            logs = [json.loads(l) for l in open(Path(run) / "metrics.jsonl") if '"tok_s"' in l][1:]
            params = json.loads((Path(run) / "done.json").read_text())["params"]
        flops_tok = C.flops_per_token(tc.model_config())
        tok_s = statistics.median(r["tok_s"] for r in logs)
        gflops = tok_s * flops_tok / 1e9
        rows.append(dict(depth=depth, params=params, tok_s=tok_s, gflops=gflops))
        print(f"{depth:>5} {params / 1e6:>7.2f}M {tok_s:>8,.0f} {gflops:>8.0f} {gflops / peaks['bfloat16']:>17.1%} "
              f"{gflops / peaks['float32']:>13.1%}")
    print(json.dumps(dict(peaks_gflops=peaks, runs=rows)))


if __name__ == "__main__":
    use_tcmalloc([sys.executable, __file__] + sys.argv[1:])
    main()
