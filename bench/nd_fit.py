"""Fit the loss laws on finished pilot runs and predict another run (what `nanogpt4 scaling predict` would do,
without registering): L(C) = a·C^b + c on compute, and L(N, D) (Hoffmann et al.) with N all parameters or the
non-embedding ones. Prints each law's prediction beside the measured loss of the run to predict.

  python bench/nd_fit.py --predict runs/default/pretrain runs/explore/v8192_r*/w*_s1337
"""
import argparse
import json
from pathlib import Path

from nanogpt4 import config as C
from nanogpt4.runs import read_config
from nanogpt4.scaling import laws


def facts(run):
    run = Path(run)
    done, cfg = json.loads((run / "done.json").read_text()), read_config(run)
    mc = C.ModelConfig(**cfg["model"])
    return dict(run=str(run), params=done["params"], ne_params=C.count_params(mc, non_embedding=True),
                tokens=done["tokens"], compute=done["flops"], final=done["final"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--predict", required=True, help="the finished run to predict")
    ap.add_argument("--metrics", default="heldout_code,val_text")
    ap.add_argument("runs", nargs="+", help="finished runs to fit on")
    a = ap.parse_args()
    rows, target = [facts(r) for r in a.runs if (Path(r) / "done.json").exists()], facts(a.predict)
    print(f"{len(rows)} fit runs, {min(r['compute'] for r in rows):.2e}-{max(r['compute'] for r in rows):.2e} FLOPs; "
          f"target {target['compute']:.2e} ({target['compute'] / max(r['compute'] for r in rows):.0f}× the largest)")
    for m in a.metrics.split(","):
        y, want = [r["final"][m] for r in rows], target["final"][m]
        preds = {"a·C^b + c": laws.fit_loss([r["compute"] for r in rows], y).predict(target["compute"])}
        for label, key in (("L(N, D), N all", "params"), ("L(N, D), N non-embedding", "ne_params")):
            fit = laws.fit_param_tokens([r[key] for r in rows], [r["tokens"] for r in rows], y)
            preds[label] = fit.predict(target[key], target["tokens"])
            print(f"  {m} {label}: E {fit.E:.3f} alpha {fit.alpha:.3f} beta {fit.beta:.3f}")
        for label, p in preds.items():
            print(f"{m:13s} {label:26s} predicted {float(p):.4f}  measured {want:.4f}  error {float(p) / want - 1:+.2%}")


if __name__ == "__main__":
    main()
