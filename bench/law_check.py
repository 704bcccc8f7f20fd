"""Fit every loss law on finished run directories and print each law's error, and the combination rule's, on other
finished runs: how a pilot ladder design (bench/ladder_explore.py) would have predicted a run it never saw.

    .venv/bin/python bench/law_check.py --fit 'runs/explore/fitd4/*' \
        --validate runs/explore/d4_r2/w160_r2_s1337 --check runs/default/pretrain

--validate runs weight the combination as in the registered rule (predict.combine); --check runs are only
predicted. Points only (no bootstrap); nothing is written. The laws are fitted with the first --check run's size as
the reference point, as a registration would with its target."""
import argparse
import glob
import json
from pathlib import Path

from nanogpt4 import config as C
from nanogpt4.runs import read_config
from nanogpt4.scaling import predict


def row(run):
    tc = C.TrainConfig(**read_config(run)["train"])
    at = predict.size(tc)
    final = json.loads((Path(run) / "done.json").read_text())["final"]
    return dict(name=f"{Path(run).name} (depth {tc.depth})", compute=at["compute"], non_embedding_params=at["n"],
                tokens=at["d"], non_embedding_compute=at["ne"], size=at, final=final)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fit", nargs="+", required=True, help="run directories or glob patterns the laws are fitted on")
    p.add_argument("--validate", nargs="*", default=[], help="runs that weight the combination")
    p.add_argument("--check", nargs="+", required=True, help="runs to predict (the first is the reference point)")
    a = p.parse_args()
    fit = [row(r) for pat in a.fit for r in sorted(glob.glob(pat)) if (Path(r) / "done.json").exists()]
    val, check = [row(r) for r in a.validate], [row(r) for r in a.check]
    print(f"{len(fit)} fit runs: " + ", ".join(r["name"] for r in fit))
    cols, vcols, ref = predict._cols(fit), predict._cols(val), check[0]
    for metric in predict.METRICS:
        laws = []
        for law, (fitter, keys, _) in predict._fitters(ref["size"]).items():
            f = fitter([cols[k] for k in keys], [r["final"][metric] for r in fit])
            laws.append(dict(law=law, f=f, keys=keys, validation_errors=predict.validation_errors(f, keys, vcols, val, metric)))
        print(f"\n{metric}")
        for r in val + check:
            preds = {x["law"]: float(x["f"].predict(*[r["size"][k] for k in x["keys"]])) for x in laws}
            both = [dict(law=x["law"], loss=preds[x["law"]], interval=[preds[x["law"]]] * 2,
                         validation_errors=x["validation_errors"]) for x in laws]
            preds["combination"] = predict.combine(both)["loss"]
            errs = "  ".join(f"{k} {v / r['final'][metric] - 1:+.2%}" for k, v in preds.items())
            kind = "validate" if r in val else "check"
            print(f"  {kind:<8} {r['name']:<26} C {r['compute']:.2e}  measured {r['final'][metric]:.4f}  {errs}")


if __name__ == "__main__":
    main()
