"""Registered loss predictions and their verification: the GPT-4 report's Figure 1 at laptop scale.

`register_loss` fits the laws to the ladder's final losses (held-out code, and text) and seals the prediction for
the target before the target trains; `verify_loss` compares the finished target with it and draws the figure.
Compute is normalised so the target is 1, as in the report.

Four laws are fitted on the same fit runs and all four predictions are sealed, before the target starts:
Hoffmann et al.'s L(N, D) = E + A·N^-α + B·D^-β and Kaplan et al.'s joint L(N, D) = E + [(A/N)^(α/β) + B/D]^β over
the ladder's grid of sizes and horizons (N the non-embedding parameters: a law in N and D carries fit runs at other
horizons than the target's to the target's), the report's L(C) = a·C^b + c through total compute, and Kaplan et al.'s L(C) = a·C^b through
non-embedding compute (their eq. 1.3: no irreducible term, and the readout, which is most of a narrow run's
compute, left out). The registered prediction of each metric combines the four by a rule sealed with them
(Bates & Granger 1969, "The combination of forecasts"): their mean, each weighted by the inverse of its mean
squared relative error on the validation runs, the capability runs, which are not in the fit, sit at the target's
horizon and depth, and train before the target. Laws the validation runs can tell apart get weights near 0 and 1;
a near tie is averaged instead of decided by noise. NOTES.md (2026-12-03, 2026-12-04, 2026-12-06 morning) measures
the laws and the rules."""
import json
from pathlib import Path

import numpy as np

from .. import config as C
from ..common import atomic_write_json
from ..runs import read_config
from . import laws, registry

METRICS = ("heldout_code", "val_text")
LAWS = {"Hoffmann L(N,D)": laws.ParamTokenFit, "Kaplan L(N,D)": laws.KaplanFit, "a*C^b+c": laws.LossFit,
        "Kaplan L(C)": laws.LossFit}
DESCRIPTIONS = {"Hoffmann L(N,D)": "Hoffmann et al.'s L(N, D) = E + A·N^-α + B·D^-β",
                "Kaplan L(N,D)": "Kaplan et al.'s L(N, D) = E + [(A/N)^(α/β) + B/D]^β",
                "a*C^b+c": "the report's a·C^b + c through total compute",
                "Kaplan L(C)": "Kaplan et al.'s a·C^b through non-embedding compute"}  # N: non-embedding parameters
RULE = ("the laws' mean weighted by the inverse of their mean squared relative error on the validation runs "
        "(Bates-Granger; equal weights without validation runs)")


def size(tc: C.TrainConfig):
    """The variables of the laws for one run, known before it starts: compute, N (non-embedding parameters), D
    (tokens) and non-embedding compute."""
    mc = tc.model_config()
    return dict(compute=C.train_flops(tc), n=C.count_params(mc, non_embedding=True), d=C.derive(tc)["tokens"],
                ne=C.train_flops(tc, non_embedding=True))


def _fitters(at):
    """law → (fit(xs, y, start), the columns it reads, where the target sits in them); `at`: the target's `size`."""
    n, d = at["n"], at["d"]
    return {"Hoffmann L(N,D)": (lambda xs, y, start=None: laws.fit_param_tokens(*xs, y, n_ref=n, d_ref=d, start=start),
                                ("n", "d"), (n, d)),
            "Kaplan L(N,D)": (lambda xs, y, start=None: laws.fit_kaplan(*xs, y, n_ref=n, d_ref=d, start=start),
                              ("n", "d"), (n, d)),
            "a*C^b+c": (lambda xs, y, start=None: laws.fit_loss(*xs, y, c_ref=at["compute"], start=start),
                        ("compute",), (at["compute"],)),
            "Kaplan L(C)": (lambda xs, y, start=None: laws.fit_power(*xs, y, c_ref=at["ne"]), ("ne",), (at["ne"],))}


def _cols(rows):
    """The laws' columns of finished runs (ladder.row's fields), named as in `size`."""
    return dict(compute=[r["compute"] for r in rows], n=[r["non_embedding_params"] for r in rows],
                d=[r["tokens"] for r in rows], ne=[r["non_embedding_compute"] for r in rows])


def validation_errors(f, keys, vcols, validation, metric):
    """A fitted law's relative error on each validation run (vcols: their `_cols`)."""
    return [float(f.predict(*[vcols[k][i] for k in keys]) / r["final"][metric] - 1) for i, r in enumerate(validation)]


def register_loss(path, target_tc: C.TrainConfig, target_run, rows, validation=(), curve=(), metrics=METRICS,
                  n_boot=1000, level=0.9):
    """Fit every law on the ladder `rows` for each metric, score each on the `validation` rows (not in the fit),
    and register all of them for the target (before it starts), with the rule's combination as the prediction.
    `curve`: training configs along the target's horizon, where Figure 1 draws the laws in N, D or non-embedding
    compute against total compute."""
    at = size(target_tc)
    validation = list(validation)
    held = {r["config_hash"] for r in rows} | {registry.config_hash(target_tc.identity())}
    if any(r["config_hash"] in held for r in validation):
        raise registry.RegistryError("a validation run is a fit run or the target: the rule must score the laws "
                                     "on runs outside the fit")
    cols, vcols = _cols(rows), _cols(validation)
    prediction = dict(target_compute=at["compute"], target_non_embedding_params=at["n"], target_tokens=at["d"],
                      target_non_embedding_compute=at["ne"], level=level, curve=[size(tc) for tc in curve], rule=RULE,
                      validation_runs=[dict(name=r["name"], compute=r["compute"], config_hash=r["config_hash"],
                                            final=r["final"]) for r in validation],
                      laws={}, metrics={})
    for m in metrics:
        loss, prediction["laws"][m] = [r["final"][m] for r in rows], {}
        for law, (fit, keys, where) in _fitters(at).items():
            xs = [cols[k] for k in keys]
            f = fit(xs, loss)
            point, lo, hi = laws.bootstrap(fit, xs, loss, where, n=n_boot, level=level, full=f)
            errs = validation_errors(f, keys, vcols, validation, m)
            prediction["laws"][m][law] = dict(law=law, loss=point, interval=[lo, hi], fit=f.to_dict(),
                                              validation_errors=errs,
                                              validation_mae=float(np.mean(np.abs(errs))) if errs else None)
        prediction["metrics"][m] = combine(prediction["laws"][m].values())
    return registry.register(path, target_tc.identity(), target_run, rows, prediction)


def combine(predictions):
    """The rule (RULE): every law's prediction, interval endpoints and validation errors averaged with weights
    ∝ 1 / (mean squared validation error); a law with a non-finite error, prediction or interval gets weight 0,
    and no finite law at all is an error. Without validation runs the weights are equal. (The interval is the
    weighted mean of the laws' bootstrap endpoints: their bootstraps resample the same runs, so their errors move
    together.)"""
    predictions = list(predictions)
    if not predictions or len({len(p["validation_errors"]) for p in predictions}) != 1:
        raise ValueError("every law must be scored on the same validation runs")
    mse = np.array([np.mean(np.square(p["validation_errors"])) if p["validation_errors"] else 1.0 for p in predictions])
    finite = np.isfinite(mse) & np.array([np.isfinite([p["loss"], *p["interval"]]).all() for p in predictions])
    if not finite.any():
        raise ValueError("no law predicts the validation runs and the target with finite numbers: nothing to register")
    w = np.where(finite, 1 / np.maximum(np.where(finite, mse, 1.0), 1e-12), 0.0)  # MSEs below 1e-12 count as ties
    w = w / w.sum()
    used = [(wi, p) for wi, p in zip(w, predictions) if wi > 0]

    def mean(get):
        return float(sum(wi * get(p) for wi, p in used))

    errs = [mean(lambda p: p["validation_errors"][i]) for i in range(len(used[0][1]["validation_errors"]))]
    return dict(law="combination", loss=mean(lambda p: p["loss"]),
                interval=[mean(lambda p: p["interval"][0]), mean(lambda p: p["interval"][1])],
                weights={p["law"]: float(wi) for wi, p in zip(w, predictions)}, validation_errors=errs,
                validation_mae=float(np.mean(np.abs(errs))) if errs else None)


def verify_loss(record_path, target_run, out_dir, others=()):
    """Compare the finished target with the registered predictions (the registered one and every law's); writes
    verify_loss.json and one PNG per metric. `others`: rows of further runs (not in the fit) to draw."""
    record = registry.load(record_path)
    if "laws" not in record["prediction"]:
        raise registry.RegistryError(f"{record_path} was sealed before every law was registered (no 'laws'): verify it "
                                     f"with the nanogpt4 commit that wrote it, {record['git_commit'][:12]}")
    target_run, out_dir = Path(target_run), Path(out_dir)
    cfg = read_config(target_run)
    registry.check_target(record, C.identity(cfg["train"], cfg["model"]))
    done_path = target_run / "done.json"
    if not done_path.exists():
        raise FileNotFoundError(f"{target_run} has not finished: nothing to verify yet")
    done = json.loads(done_path.read_text())
    result = dict(record=str(record_path), record_sha256=record["record_sha256"], registered=record["created"],
                  target_compute=done["flops"], rule=record["prediction"]["rule"], metrics={})
    for m, pred in record["prediction"]["metrics"].items():
        measured = done["final"][m]
        result["metrics"][m] = dict(compare(pred, measured), law=pred["law"], weights=pred.get("weights"),
                                    validation_mae=pred.get("validation_mae"), measured=measured,
                                    plot=str(out_dir / f"fig1_{m}.png"),
                                    laws={law: dict(compare(p, measured), validation_mae=p["validation_mae"])
                                          for law, p in record["prediction"]["laws"][m].items()})
        plot_loss(record, m, measured, done["flops"], out_dir / f"fig1_{m}.png", others)
    atomic_write_json(out_dir / "verify_loss.json", result)
    return result


def compare(pred, measured):
    """A registered prediction (loss, interval) against the measured loss."""
    lo, hi = pred["interval"]
    return dict(predicted=pred["loss"], interval=[lo, hi], rel_error=(pred["loss"] - measured) / measured,
                in_interval=lo <= measured <= hi)


def _bar(point, lo, hi):
    """Error-bar lengths of an interval around a point; a bootstrap interval need not contain the full-data fit's
    point (its resamples may all land on one side), and matplotlib refuses negative lengths."""
    return [[max(point - lo, 0.0)], [max(hi - point, 0.0)]]


def plot_loss(record, metric, measured, target_compute, path, others=()):
    """Figure 1 analogue: ladder runs, the registered laws (those in N, D or non-embedding compute along the target's
    horizon; the report's a·C^b + c through compute), their registered predictions, the validation runs and the
    measured target."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    pred, preds = record["prediction"]["metrics"][metric], record["prediction"]["laws"][metric]
    ref = record["prediction"]["target_compute"]
    runs = record["ladder_runs"]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    curve = record["prediction"]["curve"]
    x = np.array([r["compute"] for r in runs]) / ref
    xs = np.logspace(np.log10(x.min()) - 0.2, np.log10(max(1.0, target_compute / ref)) + 0.2, 200)
    styles = {"Hoffmann L(N,D)": ("-", "tab:gray"), "Kaplan L(N,D)": ("--", "tab:purple"), "a*C^b+c": (":", "tab:brown"),
              "Kaplan L(C)": ("-.", "tab:olive")}
    for i, (law, p) in enumerate(preds.items()):
        fit, (ls, colour) = LAWS[law](**p["fit"]), styles[law]
        chosen = (" (the registered prediction)" if law == pred["law"] else
                  f", weight {pred['weights'][law]:.2f}" if "weights" in pred else "")
        if law == "a*C^b+c":
            ax.plot(xs, fit.predict(xs * ref), ls, color=colour, label=f"{law}: {fit.a:.3f}·C^{fit.b:.3f} + {fit.c:.3f}")
        elif law == "Kaplan L(C)" and curve:  # drawn against total compute along the target's horizon
            ax.plot([c["compute"] / ref for c in curve], fit.predict([c["ne"] for c in curve]), ls, color=colour,
                    label=f"{law}: {fit.a:.3f}·C_ne^{fit.b:.3f}, at the target's horizon")
        elif curve:
            ax.plot([c["compute"] / ref for c in curve], fit.predict([c["n"] for c in curve], [c["d"] for c in curve]),
                    ls, color=colour, label=f"{law} at the target's horizon, E = {fit.E:.2f}")
        lo, hi = p["interval"]
        ax.errorbar([1.0 * (1 + 0.04 * (i - 1.5))], [p["loss"]], yerr=_bar(p["loss"], lo, hi), fmt="o",
                    color=colour, capsize=4, ms=4, label=f"registered, {law}: {p['loss']:.4f} [{lo:.4f}, {hi:.4f}]{chosen}")
    if "weights" in pred:  # the registered prediction is the laws' combination (RULE)
        lo, hi = pred["interval"]
        ax.errorbar([1.09], [pred["loss"]], yerr=_bar(pred["loss"], lo, hi), fmt="D", color="black",
                    capsize=5, ms=6, zorder=5, label=f"registered, the combination: {pred['loss']:.4f} [{lo:.4f}, {hi:.4f}]")
    horizons = sorted({r["tokens_per_param"] for r in runs})
    for i, h in enumerate(horizons):
        sel = [r for r in runs if r["tokens_per_param"] == h]
        ax.scatter([r["compute"] / ref for r in sel], [r["final"][metric] for r in sel], color=plt.cm.Blues(0.5 + 0.5 * i / max(1, len(horizons) - 1)),
                   zorder=3, label=f"ladder runs in the fit, {h:g} tokens/parameter ({len(sel)})")
    if others:
        ax.scatter([r["compute"] / ref for r in others], [r["final"][metric] for r in others], facecolors="none",
                   edgecolors="tab:orange", zorder=3, label=f"validation (capability) runs, not in the fit ({len(others)})")
    ax.scatter([target_compute / ref], [measured], color="tab:green", marker="*", s=180, zorder=4,
               label=f"base model, measured {measured:.4f} ({pred['law']} {(pred['loss'] - measured) / measured:+.2%})")
    ax.set_xscale("log")
    ax.set_xlabel("training compute (target = 1)")
    ax.set_ylabel(f"final loss on {metric} (nats/token)")
    ax.set_title(f"Predictable scaling: {metric} loss")
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
