"""Scaling-law fits. Loss: L(C) = a·C^b + c with an irreducible term c (Henighan et al. 2020; the GPT-4 report's
Figure 1), or L(N, D) over a grid of sizes and horizons (Hoffmann et al. 2022's sum of
powers, or Kaplan et al. 2020's joint form with an irreducible term). Capability: -E[log pass_rate](C)
= α·C^(-k) (the report's Figure 2). Compute, sizes and tokens are normalised by a reference (the target's, or the
largest run's) before fitting, so the parameters are well conditioned."""
from dataclasses import dataclass, asdict

import numpy as np
from scipy.optimize import least_squares


@dataclass
class LossFit:
    a: float
    b: float
    c: float
    c_ref: float  # compute is measured in units of c_ref

    def predict(self, compute):
        return self.a * (np.asarray(compute, dtype=float) / self.c_ref) ** self.b + self.c

    def to_dict(self):
        return asdict(self)


class TooFewDistinct(ValueError):
    """The runs do not pin the law: too few distinct values of one of its variables."""


def distinct(compute, need, law):
    """Refuse a fit whose runs have fewer than `need` distinct compute values (seeds of one size share theirs)."""
    if len(set(np.asarray(compute, dtype=float).tolist())) < need:
        raise TooFewDistinct(f"{law} needs runs at at least {need} distinct compute values, got "
                         f"{sorted(set(np.asarray(compute, dtype=float).tolist()))} from {len(compute)} runs")


def _best(resid, starts, bounds):
    """The lowest-cost least-squares solution over the starting points."""
    fits = [least_squares(resid, p0, bounds=bounds) for p0 in starts]
    return min(fits, key=lambda r: r.cost).x


def fit_power(compute, loss, c_ref=None, start=None):
    """L = a·(C/c_ref)^b with no irreducible term: a straight line in log-log space."""
    x, y = np.asarray(compute, dtype=float), np.asarray(loss, dtype=float)
    distinct(x, 2, "a power law")
    c_ref = float(c_ref or x.max())
    b, log_a = np.polyfit(np.log(x / c_ref), np.log(y), 1)
    return LossFit(float(np.exp(log_a)), float(b), 0.0, c_ref)


def fit_loss(compute, loss, c_ref=None, start=None):
    """Least-squares fit of L = a·(C/c_ref)^b + c with a > 0, b < 0, 0 ≤ c < min(L), on log-loss residuals
    (relative errors weigh small and large runs alike). `start`: a LossFit to start from instead of a few
    generic starting points (bootstrap refits start from the full-data fit)."""
    x, y = np.asarray(compute, dtype=float), np.asarray(loss, dtype=float)
    distinct(x, 3, "a three-parameter law")
    if np.any(x <= 0) or np.any(y <= 0):
        raise ValueError("compute and loss must be positive")
    c_ref = float(c_ref or x.max())
    u = x / c_ref
    lo = y.min() * (1 - 1e-9)

    def resid(p):
        a, b, c = p
        return np.log(a * u ** b + c) - np.log(y)

    if start is not None:
        starts = [[start.a, start.b, min(start.c, 0.999 * lo)]]
    else:  # a few starts: the irreducible term is the hard parameter
        starts = [[max(float(np.mean((y - c0) / u ** -0.1)), 1e-6), -0.1, c0] for c0 in (0.0, 0.5 * lo, 0.9 * lo)]
    a, b, c = _best(resid, starts, ([1e-12, -5.0, 0.0], [np.inf, -1e-6, lo]))
    return LossFit(float(a), float(b), float(c), c_ref)


def bootstrap(fit, xs, loss, at, n=1000, seed=0, level=0.9, full=None):
    """A law's prediction at `at` with a bootstrap interval: `fit(xs, loss, start=None)` is one of the fits here
    on the columns `xs` (compute; or parameters and tokens); the runs are resampled with replacement, refitted
    from the full-data fit and predicted at `at` (a tuple of the columns' values). Resamples the law refuses
    (TooFewDistinct) are redrawn, at most 100·n draws. `full`: the full-data fit when the caller has it already.
    Returns (point, low, high)."""
    xs, y = [np.asarray(x, dtype=float) for x in xs], np.asarray(loss, dtype=float)
    full = fit(xs, y) if full is None else full
    point = float(full.predict(*at))
    rng, preds = np.random.default_rng(seed), []
    for _ in range(100 * n):  # bounded: with few distinct values most resamples are redrawn
        idx = rng.integers(0, len(y), len(y))
        try:
            preds.append(float(fit([x[idx] for x in xs], y[idx], start=full).predict(*at)))
        except TooFewDistinct:
            continue
        if len(preds) == n:
            break
    else:
        raise TooFewDistinct(f"only {len(preds)} of {100 * n} bootstrap resamples pinned the law")
    lo, hi = np.quantile(preds, [(1 - level) / 2, (1 + level) / 2])
    return point, float(lo), float(hi)


def grid(params, tokens, loss):
    """The columns of an L(N, D) fit as arrays, refused unless they pin the law: equal lengths, positive and
    finite values, ≥ 3 distinct N, ≥ 3 distinct D and ≥ 2 ratios D/N (with fewer an exponent is not pinned)."""
    n, d, y = (np.asarray(v, dtype=float) for v in (params, tokens, loss))
    if not n.shape == d.shape == y.shape or n.ndim != 1:
        raise ValueError(f"params, tokens and loss must be three equal-length lists, got shapes {n.shape}, {d.shape}, {y.shape}")
    if not (np.all(np.isfinite(np.concatenate([n, d, y]))) and np.all(n > 0) and np.all(d > 0) and np.all(y > 0)):
        raise ValueError("params, tokens and loss must be positive and finite")
    distinct(n, 3, "L(N, D) (model sizes)")
    distinct(d, 3, "L(N, D) (token counts)")
    # ln(D/N) to 0.1 (~10%): a horizon's runs differ a little in D/N as their tokens round to whole batches
    distinct(np.round(np.log(d / n), 1), 2, "L(N, D) (ln tokens per parameter: on one ratio N and D move together "
             "and α, β are one)")
    return n, d, y


@dataclass
class ParamTokenFit:
    """L(N, D) = E + A·(N/n_ref)^(-alpha) + B·(D/d_ref)^(-beta): Hoffmann et al. 2022's parametric loss (their
    approach 3), a law over a grid of model sizes N and training tokens D instead of one line through compute."""
    E: float
    A: float
    alpha: float
    B: float
    beta: float
    n_ref: float
    d_ref: float

    def predict(self, params, tokens):
        n, d = np.asarray(params, dtype=float) / self.n_ref, np.asarray(tokens, dtype=float) / self.d_ref
        return self.E + self.A * n ** -self.alpha + self.B * d ** -self.beta

    def to_dict(self):
        return asdict(self)


def fit_param_tokens(params, tokens, loss, n_ref=None, d_ref=None, start=None):
    """Least-squares fit of ParamTokenFit on log-loss residuals (relative errors, as fit_loss), from a grid of
    starts (Hoffmann et al. fit from a grid too: the exponents and E trade off) or from `start` (a ParamTokenFit:
    bootstrap refits). The runs must pin the law (`grid`)."""
    n, d, y = grid(params, tokens, loss)
    n_ref, d_ref = float(n_ref or n.max()), float(d_ref or d.max())
    u, v, lo = n / n_ref, d / d_ref, y.min() * (1 - 1e-9)

    def resid(p):
        E, A, alpha, B, beta = p
        return np.log(E + A * u ** -alpha + B * v ** -beta) - np.log(y)

    if start is not None:
        starts = [[min(start.E, 0.999 * lo), start.A, start.alpha, start.B, start.beta]]
    else:
        starts = [[e0, max(float(np.mean(y)) - e0, 1e-3) / 2, a0, max(float(np.mean(y)) - e0, 1e-3) / 2, a0]
                  for e0 in (0.0, 0.5 * lo, 0.9 * lo) for a0 in (0.1, 0.5)]
    return ParamTokenFit(*map(float, _best(resid, starts, ([0, 0, 1e-3, 0, 1e-3], [lo, np.inf, 3, np.inf, 3]))),
                         n_ref, d_ref)


@dataclass
class KaplanFit:
    """L(N, D) = E + [(A/(N/n_ref))^(alpha/beta) + B/(D/d_ref)]^beta: Kaplan et al. 2020's joint law (their
    eq. 1.5, A = N_c, B = D_c, alpha = α_N, beta = α_D) with an irreducible term E. Unlike Hoffmann's sum, the
    size and data terms interact: the penalty for too few tokens grows with the model."""
    E: float
    A: float
    alpha: float
    B: float
    beta: float
    n_ref: float
    d_ref: float

    def predict(self, params, tokens):
        n, d = np.asarray(params, dtype=float) / self.n_ref, np.asarray(tokens, dtype=float) / self.d_ref
        return self.E + ((self.A / n) ** (self.alpha / self.beta) + self.B / d) ** self.beta

    def to_dict(self):
        return asdict(self)


def fit_kaplan(params, tokens, loss, n_ref=None, d_ref=None, start=None):
    """Least-squares fit of KaplanFit on log-loss residuals, from a grid of starts or from `start` (a KaplanFit),
    with the same conditions on the runs (`grid`)."""
    n, d, y = grid(params, tokens, loss)
    n_ref, d_ref = float(n_ref or n.max()), float(d_ref or d.max())
    u, v, lo = n / n_ref, d / d_ref, y.min() * (1 - 1e-9)

    def resid(p):
        E, A, alpha, B, beta = p
        return np.log(E + ((A / u) ** (alpha / beta) + B / v) ** beta) - np.log(y)

    if start is not None:
        starts = [[min(start.E, 0.999 * lo), start.A, start.alpha, start.B, start.beta]]
    else:
        starts = [[e0, a, a0, b, b0] for e0 in (0.0, 0.5 * lo, 0.9 * lo) for a, b in ((0.1, 0.1), (1.0, 1.0))
                  for a0, b0 in ((0.1, 0.1), (0.5, 0.3))]
    return KaplanFit(*map(float, _best(resid, starts, ([0, 1e-9, 1e-3, 1e-9, 1e-3], [lo, np.inf, 3, np.inf, 3]))),
                     n_ref, d_ref)


@dataclass
class PassRateFit:
    alpha: float
    k: float
    c_ref: float

    def predict(self, compute):
        """-E[log pass_rate] at `compute`."""
        return self.alpha * (np.asarray(compute, dtype=float) / self.c_ref) ** (-self.k)

    def to_dict(self):
        return asdict(self)


def fit_pass_rate(compute, neg_log_pass, c_ref=None):
    """Fit -E[log pass_rate] = α·(C/c_ref)^(-k): a straight line in log-log space."""
    x, y = np.asarray(compute, dtype=float), np.asarray(neg_log_pass, dtype=float)
    if len(x) < 2 or np.any(y <= 0):
        raise ValueError("need at least 2 runs with positive -E[log pass_rate]")
    c_ref = float(c_ref or x.max())
    slope, intercept = np.polyfit(np.log(x / c_ref), np.log(y), 1)
    return PassRateFit(float(np.exp(intercept)), float(-slope), c_ref)
