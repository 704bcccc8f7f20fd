"""The learning-rate sweep behind config.BASE_LR / EMBED_LR_MULT / READOUT_LR_MULT.

    .venv/bin/python bench/lr_sweep.py [--tokens runs/default/tokenizer/tokens] [--depth 2] [--max-tokens 600000]

Trains the same short run (depth 2, 600K tokens, batch 4096) for each (lr, embed mult, readout mult) and prints
the final validation losses. Under muP the winner found at one width holds at the others; rerun with --depth 4 to
check that on your machine.
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

from nanogpt4 import config as C
from nanogpt4.cli import use_tcmalloc
from nanogpt4.train import pretrain

GRID = [(0.003, 1, 1), (0.003, 10, 1), (0.003, 30, 1), (0.003, 10, 3), (0.003, 30, 10), (0.003, 30, 30),
        (0.003, 10, 10), (0.001, 30, 10), (0.006, 15, 5), (0.0015, 60, 20), (0.003, 100, 30), (0.01, 10, 1)]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", default="runs/default/tokenizer/tokens")
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=600_000)
    args = p.parse_args()
    vocab = json.loads((Path(args.tokens) / "meta.json").read_text())["vocab_size"]
    print(f"{'lr':>7} {'embed x':>8} {'readout x':>9} {'val_text':>9} {'val_code':>9} {'heldout_code':>12}")
    for lr, emb, out in GRID:
        tc = C.TrainConfig(depth=args.depth, vocab_size=vocab, lr=lr, embed_lr_mult=emb, readout_lr_mult=out,
                           max_tokens=args.max_tokens, batch_tokens=4096, eval_every=10 ** 9, eval_tokens=32768)
        with tempfile.TemporaryDirectory() as run:
            ev = pretrain.train(tc, run, args.tokens, quiet=True)
        print(f"{lr:>7} {emb:>8} {out:>9} {ev['val_text']:>9.3f} {ev['val_code']:>9.3f} {ev['heldout_code']:>12.3f}",
              flush=True)


if __name__ == "__main__":
    use_tcmalloc([sys.executable, __file__] + sys.argv[1:])
    main()
