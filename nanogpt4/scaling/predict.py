"""Registered loss predictions and their verification: the GPT-4 report's Figure 1 at laptop scale.

`register_loss` fits L(C) = a·C^b + c to the ladder's final losses (held-out code, and text) and seals the
prediction for the target before the target trains; `verify_loss` compares the finished target with it and draws
the figure. Compute is normalised so the target is 1, as in the report."""
import json
from pathlib import Path

import numpy as np

from .. import config as C
from ..common import atomic_write_json
from ..runs import read_config
from . import laws, registry

METRICS = ("heldout_code", "val_text")


def register_loss(path, target_tc: C.TrainConfig, target_run, rows, metrics=METRICS, n_boot=1000, level=0.9):
    """Fit each metric on the ladder rows and register the predictions for the target (before it starts).
    `metrics` holds the report's law, L = a·C^b + c on total compute; `alternative` a second, secondary law
    registered beside it: L = a·C^b on non-embedding compute (NOTES.md, 2026-11-24, why)."""
    target_flops, target_ne = C.train_flops(target_tc), C.train_flops(target_tc, non_embedding=True)
    prediction = dict(target_compute=target_flops, target_non_embedding_compute=target_ne, level=level, metrics={},
                      alternative={})
    compute, ne = [r["compute"] for r in rows], [r["non_embedding_compute"] for r in rows]
    for m in metrics:
        loss = [r["final"][m] for r in rows]
        fit = laws.fit_loss(compute, loss, c_ref=target_flops)
        point, lo, hi = laws.bootstrap_loss(compute, loss, target_flops, n=n_boot, level=level, c_ref=target_flops)
        prediction["metrics"][m] = dict(loss=point, interval=[lo, hi], fit=fit.to_dict())
        fit = laws.fit_power(ne, loss, c_ref=target_ne)
        point, lo, hi = laws.bootstrap_loss(ne, loss, target_ne, n=n_boot, level=level, c_ref=target_ne, irreducible=False)
        prediction["alternative"][m] = dict(law="a*C_ne^b", loss=point, interval=[lo, hi], fit=fit.to_dict())
    return registry.register(path, target_tc.identity(), target_run, rows, prediction)


def verify_loss(record_path, target_run, out_dir, others=()):
    """Compare the finished target with the registered prediction; writes verify_loss.json and one PNG per metric.
    `others`: rows of further runs (not in the fit) to draw for context."""
    record = registry.load(record_path)
    target_run, out_dir = Path(target_run), Path(out_dir)
    cfg = read_config(target_run)
    registry.check_target(record, C.identity(cfg["train"], cfg["model"]))
    done_path = target_run / "done.json"
    if not done_path.exists():
        raise FileNotFoundError(f"{target_run} has not finished: nothing to verify yet")
    done = json.loads(done_path.read_text())
    result = dict(record=str(record_path), record_sha256=record["record_sha256"], registered=record["created"],
                  target_compute=done["flops"], metrics={})
    for m, pred in record["prediction"]["metrics"].items():
        measured = done["final"][m]
        result["metrics"][m] = dict(compare(pred, measured), measured=measured, plot=str(out_dir / f"fig1_{m}.png"))
        plot_loss(record, m, measured, done["flops"], out_dir / f"fig1_{m}.png", others)
        alt = record["prediction"].get("alternative", {}).get(m)
        if alt:
            result["metrics"][m]["alternative"] = dict(compare(alt, measured), law=alt["law"])
    atomic_write_json(out_dir / "verify_loss.json", result)
    return result


def compare(pred, measured):
    """A registered prediction (loss, interval) against the measured loss."""
    lo, hi = pred["interval"]
    return dict(predicted=pred["loss"], interval=[lo, hi], rel_error=(pred["loss"] - measured) / measured,
                in_interval=lo <= measured <= hi)


def plot_loss(record, metric, measured, target_compute, path, others=()):
    """Figure 1 analogue: ladder runs, the fitted law (dotted), the registered prediction and the measured target."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    pred = record["prediction"]["metrics"][metric]
    fit = laws.LossFit(**pred["fit"])
    ref = record["prediction"]["target_compute"]
    x = np.array([r["compute"] for r in record["ladder_runs"]]) / ref
    y = np.array([r["final"][metric] for r in record["ladder_runs"]])
    xs = np.logspace(np.log10(x.min()) - 0.2, np.log10(max(1.0, target_compute / ref)) + 0.2, 200)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(xs, fit.predict(xs * ref), ":", color="tab:gray",
            label=f"fit  L = {fit.a:.3f}·C^{fit.b:.3f} + {fit.c:.3f}  (C relative to target)")
    ax.scatter(x, y, color="tab:blue", zorder=3, label=f"ladder runs in the fit ({len(x)})")
    if others:
        ax.scatter([r["compute"] / ref for r in others], [r["final"][metric] for r in others], facecolors="none",
                   edgecolors="tab:orange", zorder=3, label=f"larger runs, not in the fit ({len(others)})")
    lo, hi = pred["interval"]
    ax.errorbar([1.0], [pred["loss"]], yerr=[[pred["loss"] - lo], [hi - pred["loss"]]], fmt="none", ecolor="tab:gray",
                capsize=4, label=f"registered prediction {pred['loss']:.4f} [{lo:.4f}, {hi:.4f}]")
    ax.scatter([target_compute / ref], [measured], color="tab:green", marker="*", s=180, zorder=4,
               label=f"target, measured {measured:.4f} (prediction {(pred['loss'] - measured) / measured:+.2%})")
    ax.set_xscale("log")
    ax.set_xlabel("training compute (target = 1)")
    ax.set_ylabel(f"final loss on {metric} (nats/token)")
    ax.set_title(f"Predictable scaling: {metric} loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
