"""Pilot ladders for predictable scaling: train rungs of the cpu preset with TrainConfig overrides into
runs/explore/<tag>/ (finished runs are skipped) and print each run's final losses and compute.

  python bench/ladder_explore.py --tag r20 --widths 16,24,32 --seeds 1337,1338 tokens_per_param=20 beta2=0.99
"""
import argparse
import json
from dataclasses import replace
from pathlib import Path

from nanogpt4 import config as C
from nanogpt4.scaling import ladder as L


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tag", required=True)
    ap.add_argument("--widths", required=True)
    ap.add_argument("--seeds", default="1337")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--tokens", default="runs/default/tokenizer/tokens")
    ap.add_argument("overrides", nargs="*", help="TrainConfig field=value")
    a = ap.parse_args()
    fields = C.TrainConfig.__dataclass_fields__
    over = {}
    for kv in a.overrides:
        k, v = kv.split("=")
        known = {**L.Preset.__dataclass_fields__, **fields}  # TrainConfig fields and the preset's (min_depth)
        kind = known[k].type if k in known else str  # the annotation: a float field may default to an int
        over[k] = v.lower() in ("1", "true") if kind is bool else kind(v)
    r = over.pop("tokens_per_param", L.PRESETS[a.preset].target_tokens_per_param)
    preset = replace(L.PRESETS[a.preset], **{k: over.pop(k) for k in list(over) if k in L.Preset.__dataclass_fields__})
    for w in map(int, a.widths.split(",")):
        for s in map(int, a.seeds.split(",")):
            tc = replace(L.rung(preset, w, r, s), **over)
            tc = replace(tc, eval_every=C.derive(tc)["steps"], compile=C.train_flops(tc) > 1e14)
            run = Path("runs/explore") / a.tag / L.name(tc)
            done = L.train_run(tc, run, a.tokens)
            print(json.dumps(dict(tag=a.tag, width=w, seed=s, depth=tc.depth, params=done["params"],
                                  tokens=done["tokens"], flops=done["flops"], final=done["final"])), flush=True)


if __name__ == "__main__":
    main()
