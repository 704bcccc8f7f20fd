"""Three model sizes trained with one methodology: does held-out code loss fall monotonically with size?

    .venv/bin/python bench/sizes.py [--tokens runs/default/tokenizer/tokens] [--depths 1,2,3] [--tokens-per-param 1]

Every run is made by the size dial alone (`TrainConfig(depth=…)`), with the same tokens-per-parameter horizon,
the same muP learning rates and the same schedule shape; only the depth changes. Prints final losses on the
held-out code set (sympy, never trained on) and on the text/code validation splits, and writes them as JSON.
"""
import argparse
import json
import sys
import time
from pathlib import Path

from nanogpt4 import config as C
from nanogpt4.cli import use_tcmalloc
from nanogpt4.common import atomic_write_json
from nanogpt4.train import pretrain


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", default="runs/default/tokenizer/tokens")
    p.add_argument("--depths", default="1,2,3")
    p.add_argument("--tokens-per-param", type=float, default=1.0)
    p.add_argument("--out", default="runs/bench_sizes")
    args = p.parse_args()
    vocab = json.loads((Path(args.tokens) / "meta.json").read_text())["vocab_size"]
    rows = []
    print(f"{'depth':>5} {'params':>8} {'tokens':>8} {'FLOPs':>9} {'minutes':>7} {'heldout_code':>12} {'val_text':>9} {'val_code':>9}")
    for depth in map(int, args.depths.split(",")):
        tc = C.TrainConfig(depth=depth, vocab_size=vocab, tokens_per_param=args.tokens_per_param, compile=True)
        run = Path(args.out) / f"d{depth}_tpp{args.tokens_per_param:g}"
        t = time.perf_counter()
        if (run / "done.json").exists():
            final = json.loads((run / "done.json").read_text())["final"]
        else:
            final = pretrain.train(tc, run, args.tokens, resume=True, quiet=True)
        done = json.loads((run / "done.json").read_text())
        rows.append(dict(depth=depth, params=done["params"], tokens=done["tokens"], flops=done["flops"], **final))
        print(f"{depth:>5} {done['params'] / 1e6:>7.2f}M {done['tokens'] / 1e6:>7.2f}M {done['flops']:>9.2e} "
              f"{(time.perf_counter() - t) / 60:>7.1f} {final['heldout_code']:>12.4f} {final['val_text']:>9.4f} "
              f"{final['val_code']:>9.4f}", flush=True)
    mono = all(a["heldout_code"] > b["heldout_code"] for a, b in zip(rows, rows[1:]))
    print(f"held-out code loss decreases monotonically with size: {mono}")
    atomic_write_json(Path(args.out) / "results.json", dict(rows=rows, monotonic=mono))


if __name__ == "__main__":
    use_tcmalloc([sys.executable, __file__] + sys.argv[1:])
    main()
