"""In-context learning probe: mean held-out code loss by position in the window, for each run given.
The drop from early to late positions (Olsson et al. 2022's in-context learning score) shows whether a model
uses its context (copying identifiers), which changes the slope of held-out code loss along a ladder.

  python bench/icl_probe.py runs/explore/r20/w16_s1337 runs/explore/r20/w128_s1337
"""
import json
import sys

import torch
import torch.nn.functional as F

from nanogpt4.data import shards
from nanogpt4.runs import load as load_run
from nanogpt4.train.pretrain import eval_windows

BUCKETS = [(0, 8), (8, 32), (32, 96), (96, 256)]


@torch.no_grad()
def main(runs, split="heldout_code", n_tokens=2 ** 16):
    for run in runs:
        loaded = load_run(run, "cpu")
        cfg, model = loaded.config, loaded.model
        x, y = eval_windows(shards.load(cfg["tokens_dir"], split), model.cfg.seq_len, n_tokens)
        losses = []
        for i in range(0, len(x), 32):
            with torch.autocast("cpu", torch.bfloat16):
                logits = model(x[i:i + 32])
            losses.append(F.cross_entropy(logits.float().transpose(1, 2), y[i:i + 32], reduction="none"))
        per_pos = torch.cat(losses).mean(0)
        buckets = [per_pos[a:b].mean().item() for a, b in BUCKETS if b <= len(per_pos)]
        flops = json.loads(open(f"{run}/done.json").read())["flops"]
        print(f"{run:45s} {flops:.2e}  " + "  ".join(f"{a}-{b}: {v:.3f}" for (a, b), v in zip(BUCKETS, buckets))
              + f"  icl {buckets[0] - buckets[-1]:+.3f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
