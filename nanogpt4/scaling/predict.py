"""Registered loss predictions and their verification: the GPT-4 report's Figure 1 at laptop scale.

`register_loss` fits the laws to the ladder's final losses (held-out code, and text) and seals the prediction for
the target before the target trains; `verify_loss` compares the finished target with it and draws the figure.
Compute is normalised so the target is 1, as in the report.

Two laws are registered, both before the target starts. The primary one is Hoffmann et al.'s
L(N, D) = E + A·N^-α + B·D^-β over the ladder's grid of sizes and horizons, N the non-embedding parameters: the
ladder's runs sit at longer horizons than the target (so that each is past the in-context copying switch), and a
law in N and D carries them to the target's horizon, which one line through compute cannot. The second is the
report's L(C) = a·C^b + c through total compute, on the same runs (NOTES.md, 2026-12-03, how they compare)."""
import json
from pathlib import Path

import numpy as np

from .. import config as C
from ..common import atomic_write_json
from ..runs import read_config
from . import laws, registry

METRICS = ("heldout_code", "val_text")
LAWS = {"L(N,D)": laws.ParamTokenFit, "a*C^b+c": laws.LossFit}  # a registered law's name → its fit


def size(tc: C.TrainConfig):
    """(compute, N non-embedding, D) of a run, known before it starts: the variables of the laws."""
    mc = tc.model_config()
    return C.train_flops(tc), C.count_params(mc, non_embedding=True), C.derive(tc)["tokens"]


def register_loss(path, target_tc: C.TrainConfig, target_run, rows, curve=(), metrics=METRICS, n_boot=1000, level=0.9):
    """Fit each metric on the ladder rows and register both laws' predictions for the target (before it starts).
    `curve`: training configs along the target's horizon, where Figure 1 draws L(N, D) against compute."""
    compute, n, d = size(target_tc)
    cols = dict(compute=[r["compute"] for r in rows], n=[r["non_embedding_params"] for r in rows],
                d=[r["tokens"] for r in rows])

    def nd(xs, y, start=None):
        return laws.fit_param_tokens(xs[0], xs[1], y, n_ref=n, d_ref=d, start=start)

    def report_law(xs, y, start=None):
        return laws.fit_loss(xs[0], y, c_ref=compute, start=start)

    prediction = dict(target_compute=compute, target_non_embedding_params=n, target_tokens=d, level=level,
                      curve=[dict(zip(("compute", "n", "d"), size(tc))) for tc in curve], metrics={}, alternative={})
    for m in metrics:
        loss = [r["final"][m] for r in rows]
        for key, law, fit, xs, at in (("metrics", "L(N,D)", nd, [cols["n"], cols["d"]], (n, d)),
                                      ("alternative", "a*C^b+c", report_law, [cols["compute"]], (compute,))):
            point, lo, hi = laws.bootstrap(fit, xs, loss, at, n=n_boot, level=level)
            prediction[key][m] = dict(law=law, loss=point, interval=[lo, hi], fit=fit(xs, loss).to_dict())
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
        alt = record["prediction"]["alternative"][m]
        result["metrics"][m] = dict(compare(pred, measured), law=pred["law"], measured=measured,
                                    plot=str(out_dir / f"fig1_{m}.png"),
                                    alternative=dict(compare(alt, measured), law=alt["law"]))
        plot_loss(record, m, measured, done["flops"], out_dir / f"fig1_{m}.png", others)
    atomic_write_json(out_dir / "verify_loss.json", result)
    return result


def compare(pred, measured):
    """A registered prediction (loss, interval) against the measured loss."""
    lo, hi = pred["interval"]
    return dict(predicted=pred["loss"], interval=[lo, hi], rel_error=(pred["loss"] - measured) / measured,
                in_interval=lo <= measured <= hi)


def plot_loss(record, metric, measured, target_compute, path, others=()):
    """Figure 1 analogue: ladder runs, the registered laws (L(N, D) along the target's horizon, solid; the report's
    a·C^b + c, dotted), the registered prediction and the measured target."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    pred, alt = record["prediction"]["metrics"][metric], record["prediction"]["alternative"][metric]
    ref = record["prediction"]["target_compute"]
    runs = record["ladder_runs"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    curve = record["prediction"]["curve"]
    if curve:
        nd = LAWS[pred["law"]](**pred["fit"])
        ax.plot([c["compute"] / ref for c in curve], nd.predict([c["n"] for c in curve], [c["d"] for c in curve]),
                "-", color="tab:gray", label=f"L(N, D) = {nd.E:.2f} + {nd.A:.2f}·N^-{nd.alpha:.2f} + {nd.B:.2f}·D^-"
                f"{nd.beta:.2f} at the target's horizon (N, D relative to the target's)")
    x = np.array([r["compute"] for r in runs]) / ref
    xs = np.logspace(np.log10(x.min()) - 0.2, np.log10(max(1.0, target_compute / ref)) + 0.2, 200)
    fit = LAWS[alt["law"]](**alt["fit"])
    ax.plot(xs, fit.predict(xs * ref), ":", color="tab:gray",
            label=f"L(C) = {fit.a:.3f}·C^{fit.b:.3f} + {fit.c:.3f}  (C relative to the target)")
    horizons = sorted({r["tokens_per_param"] for r in runs})
    for i, h in enumerate(horizons):
        sel = [r for r in runs if r["tokens_per_param"] == h]
        ax.scatter([r["compute"] / ref for r in sel], [r["final"][metric] for r in sel], color=plt.cm.Blues(0.5 + 0.5 * i / max(1, len(horizons) - 1)),
                   zorder=3, label=f"ladder runs in the fit, {h:g} tokens/parameter ({len(sel)})")
    if others:
        ax.scatter([r["compute"] / ref for r in others], [r["final"][metric] for r in others], facecolors="none",
                   edgecolors="tab:orange", zorder=3, label=f"capability runs, not in the loss fit ({len(others)})")
    for p, colour, law in ((pred, "black", "L(N, D)"), (alt, "tab:gray", "L(C)")):
        lo, hi = p["interval"]
        ax.errorbar([1.0], [p["loss"]], yerr=[[p["loss"] - lo], [hi - p["loss"]]], fmt="o", color=colour, capsize=4,
                    ms=4, label=f"registered, {law}: {p['loss']:.4f} [{lo:.4f}, {hi:.4f}]")
    ax.scatter([target_compute / ref], [measured], color="tab:green", marker="*", s=180, zorder=4,
               label=f"base model, measured {measured:.4f} (L(N, D) {(pred['loss'] - measured) / measured:+.2%})")
    ax.set_xscale("log")
    ax.set_xlabel("training compute (target = 1)")
    ax.set_ylabel(f"final loss on {metric} (nats/token)")
    ax.set_title(f"Predictable scaling: {metric} loss")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
