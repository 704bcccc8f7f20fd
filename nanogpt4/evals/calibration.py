"""Calibration of multiple-choice answers (the GPT-4 report's Figure 8): how often an answer given with
probability p is right. A model's confidence in an item is the probability of its chosen option after
normalising over the options; expected calibration error (ECE) is the item-weighted mean |accuracy − confidence|
over equal-width confidence bins."""
import numpy as np


def option_probs(logprobs):
    """Per-item option log-probabilities → probabilities normalised over the options."""
    lp = np.asarray(logprobs, dtype=float)
    p = np.exp(lp - lp.max())
    return p / p.sum()


def reliability(confidence, correct, bins=10):
    """Per-bin (low, high, items, mean confidence, accuracy) and the ECE."""
    conf, ok = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float)
    if len(conf) == 0:
        raise ValueError("no items")
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            rows.append(dict(low=edges[b], high=edges[b + 1], n=int(m.sum()), confidence=float(conf[m].mean()),
                             accuracy=float(ok[m].mean())))
            ece += m.sum() / len(conf) * abs(ok[m].mean() - conf[m].mean())
    return rows, float(ece)


def plot(curves, path, title="Calibration"):
    """curves: {label: (confidence, correct)} → one reliability diagram per model, side by side (PNG): accuracy per
    confidence bin with its item count, the diagonal, the ECE in each panel's title (the report's Figure 8)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 4.2), squeeze=False)
    for ax, (label, (conf, ok)) in zip(axes[0], curves.items()):
        rows, ece = reliability(conf, ok)
        mids = [(r["low"] + r["high"]) / 2 for r in rows]
        ax.bar(mids, [r["accuracy"] for r in rows], width=0.09, color="tab:blue", alpha=0.8, label="accuracy")
        for m, r in zip(mids, rows):  # items per bin, so that a bin right 0% of the time is seen too
            ax.text(m, r["accuracy"] + 0.01, str(r["n"]), ha="center", fontsize=7, color="tab:blue")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="P(answer)", ylabel="P(correct)",
               title=f"{label}\nECE {ece:.3f} ({len(conf)} items)")
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
