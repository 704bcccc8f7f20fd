"""How much of a registered loss prediction is fit noise? Refit every law (and the combination rule) on a finished
ladder whose final losses are jittered by Gaussian noise of a given size, many times, and print the spread of the
predictions at the target beside the measured value.

    .venv/bin/python bench/fit_spread.py runs/default/scaling --sigma 0.004 --draws 50

The ladder (ladder.json), the target's size and the measured value (prediction_loss.json, verify_loss.json) are
read from the scaling directory; nothing is written. sigma is in nats (run-to-run differences of one ladder in bf16
and float32 were up to 0.008 nats: NOTES.md, 2026-12-05)."""
import argparse
import json
from pathlib import Path

import numpy as np

from nanogpt4.scaling import predict


def predictions(rows, validation, target, metric, registered):
    """{law: prediction} and the combination, fitted on rows and scored on validation (points only, no bootstrap)."""
    cols, vcols, out = predict._cols(rows), predict._cols(validation), {}
    for law, (fit, keys, at) in predict._fitters(target).items():
        if law not in registered:  # a record sealed before this law was added
            continue
        f = fit([cols[k] for k in keys], [r["final"][metric] for r in rows])
        point = float(f.predict(*at))
        out[law] = dict(law=law, loss=point, interval=[point, point],
                        validation_errors=predict.validation_errors(f, keys, vcols, validation, metric))
    out["combination"] = dict(loss=predict.combine(list(out.values()))["loss"])
    return {k: v["loss"] for k, v in out.items()}


def jitter(rows, metric, sigma, rng):
    return [{**r, "final": {**r["final"], metric: r["final"][metric] + rng.normal(0, sigma)}} for r in rows]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("scaling", help="a scaling directory with ladder.json and prediction_loss.json")
    p.add_argument("--sigma", type=float, default=0.004, help="noise added to each run's final loss (nats)")
    p.add_argument("--draws", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    d = Path(args.scaling)
    ladder = json.loads((d / "ladder.json").read_text())
    pred = json.loads((d / "prediction_loss.json").read_text())["prediction"]
    target = dict(compute=pred["target_compute"], n=pred["target_non_embedding_params"], d=pred["target_tokens"],
                  ne=pred.get("target_non_embedding_compute"))  # None in records sealed before the fourth law
    if "laws" not in pred:
        raise SystemExit(f"{d / 'prediction_loss.json'} was sealed before every law was registered: nothing to refit")
    verified = json.loads((d / "verify_loss.json").read_text())["metrics"] if (d / "verify_loss.json").exists() else {}
    rng = np.random.default_rng(args.seed)
    for metric in pred["metrics"]:
        rows, val = ladder["runs"], ladder["capability_runs"]
        base = predictions(rows, val, target, metric, pred["laws"][metric])
        draws = [predictions(jitter(rows, metric, args.sigma, rng), jitter(val, metric, args.sigma, rng), target,
                             metric, pred["laws"][metric]) for _ in range(args.draws)]
        measured = verified.get(metric, {}).get("measured")
        print(f"\n{metric}: sigma {args.sigma} nats on every fit and validation run, {args.draws} draws"
              + (f", measured {measured:.4f}" if measured else ""))
        print(f"  {'law':<18} {'unjittered':>10} {'mean':>8} {'std':>7} {'5%':>8} {'95%':>8}"
              + ("  error 5%..95%" if measured else ""))
        for law in base:
            v = np.array([x[law] for x in draws])
            lo, hi = np.percentile(v, [5, 95])
            err = f"  {lo / measured - 1:+.2%}..{hi / measured - 1:+.2%}" if measured else ""
            print(f"  {law:<18} {base[law]:>10.4f} {v.mean():>8.4f} {v.std():>7.4f} {lo:>8.4f} {hi:>8.4f}{err}")


if __name__ == "__main__":
    main()
