"""In-context learning probe: mean held-out code loss by position in the window, for each run given.
The drop from early to late positions (Olsson et al. 2022's in-context learning score) shows whether a model
uses its context (copying identifiers), which changes the slope of held-out code loss along a ladder.

  python bench/icl_probe.py runs/explore/r20/w16_s1337 runs/explore/r20/w128_s1337
"""
import json
import sys

from nanogpt4.data import shards
from nanogpt4.runs import load as load_run
from nanogpt4.train.pretrain import eval_windows, loss_by_position

BUCKETS = [(0, 8), (8, 32), (32, 96), (96, 256)]


def main(runs, split="heldout_code", n_tokens=2 ** 16):
    for run in runs:
        loaded = load_run(run, "cpu")
        data = shards.load(loaded.config["tokens_dir"], split)
        per_pos = loss_by_position(loaded.model, *eval_windows(data, loaded.model.cfg.seq_len, n_tokens))
        buckets = [per_pos[a:b].mean().item() for a, b in BUCKETS if b <= len(per_pos)]
        flops = json.loads(open(f"{run}/done.json").read())["flops"]
        print(f"{run:45s} {flops:.2e}  " + "  ".join(f"{a}-{b}: {v:.3f}" for (a, b), v in zip(BUCKETS, buckets))
              + f"  icl {buckets[0] - buckets[-1]:+.3f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
