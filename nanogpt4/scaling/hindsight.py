"""Inverse scaling: hindsight neglect (Inverse Scaling Prize, McKenzie et al. 2023; GPT-4 technical report,
Figure 3, where accuracy fell from ada to GPT-3.5 and GPT-4 reached 100%).

Each item is a few-shot prompt. Every solved example ("shot") is a bet whose expected value and actual outcome
AGREE (a positive-EV bet that paid off: Y; a negative-EV bet that lost: N); the test question is a bet where they
DISAGREE (a positive-EV bet that lost, or a negative-EV bet that won). The correct answer follows expected value,
so a model that learned "good outcome → Y" from the shots scores 0%, one that ignores the content scores ~50%,
and one that reasons about expected value scores 100%. Format (shots separated by a blank line):

    Question: Michael has the option to play a game where Michael has a 91 percent chance of losing 900 dollars
    and a 9 percent chance of earning 5 dollars. Michael plays the game and ends up losing 900 dollars. Did Michael
    make the right decision? Choose Y or N.
    Answer: N

    Question: ... Did Dana make the right decision? Choose Y or N.
    Answer:

(each Question is one line; wrapped here). The options " Y" and " N" are ranked by summed log-probability
(`nanogpt4.scoring`). The generator is ours (names, probabilities, amounts, clause order, which side happens),
seeded; each bet's |EV| is at least 20% of its larger stake and at least 5 dollars, so its sign is never in doubt;
test labels are exactly 50/50 (n even) and each prompt's shots are half Y, half N in random order. The tiny
models' context is 256 tokens: `fit_prompt` drops the earliest shots (never the question) until the prompt fits,
and every result records how many shots were used.
"""
import hashlib
import json
import math
import random
from pathlib import Path

from ..common import atomic_write_json
from ..runs import checkpoint_id, load
from ..scoring import batch_option_logprobs

OPTIONS = (" Y", " N")
NAMES = ["Michael", "David", "Sarah", "Emma", "James", "Olivia", "Daniel", "Sophia", "John", "Grace", "Thomas",
         "Alice", "Robert", "Hannah", "Peter", "Laura", "George", "Anna", "Henry", "Julia", "Paul", "Clara", "Mark",
         "Rachel", "Simon", "Helen", "Adam", "Lucy", "Frank", "Maria"]
AMOUNTS = [5, 10, 20, 25, 50, 100, 150, 200, 250, 300, 500, 750, 900, 1000]
MIN_EV_FRAC, MIN_EV = 0.2, 5.0
CACHE_NAME = "hindsight.json"
CACHE_VERSION = 1


# ----------------------------------------------------------------------------- items

def _bet(rng, name, positive_ev, won):
    """A bet with the given EV sign and realised outcome; |EV| ≥ max(MIN_EV, MIN_EV_FRAC·larger stake)."""
    while True:
        p_lose = rng.randint(5, 95)
        loss, gain = rng.choice(AMOUNTS), rng.choice(AMOUNTS)
        ev = ((100 - p_lose) * gain - p_lose * loss) / 100
        if (ev > 0) == positive_ev and abs(ev) >= max(MIN_EV, MIN_EV_FRAC * max(loss, gain)):
            return dict(name=name, p_lose=p_lose, loss=loss, gain=gain, ev=ev, won=won,
                        lose_first=rng.random() < 0.5)


def question(bet):
    """The question text of a bet, ending in 'Answer:' (no answer)."""
    n = bet["name"]
    lose = f"{bet['p_lose']} percent chance of losing {bet['loss']} dollars"
    win = f"{100 - bet['p_lose']} percent chance of earning {bet['gain']} dollars"
    first, second = (lose, win) if bet["lose_first"] else (win, lose)
    outcome = f"earning {bet['gain']} dollars" if bet["won"] else f"losing {bet['loss']} dollars"
    return (f"Question: {n} has the option to play a game where {n} has a {first} and a {second}. {n} plays the "
            f"game and ends up {outcome}. Did {n} make the right decision? Choose Y or N.\nAnswer:")


def answer(bet):
    """Taking the bet was right iff its expected value is positive."""
    return "Y" if bet["ev"] > 0 else "N"


def generate_items(n=200, shots=2, seed=0):
    """`n` test items (labels exactly balanced when n is even), each with `shots` solved examples (EV and outcome
    agree, half Y and half N) and a test bet (EV and outcome disagree). Deterministic in (n, shots, seed)."""
    rng = random.Random(seed)
    labels = [i % 2 == 0 for i in range(n)]  # True: positive EV (answer Y)
    rng.shuffle(labels)
    items = []
    for i, positive in enumerate(labels):
        names = rng.sample(NAMES, shots + 1)
        shot_signs = [k % 2 == 0 for k in range(shots)]
        rng.shuffle(shot_signs)
        shot_bets = [_bet(rng, names[k], s, won=s) for k, s in enumerate(shot_signs)]  # outcome agrees with EV
        test = _bet(rng, names[-1], positive, won=not positive)  # outcome disagrees with EV
        items.append(dict(id=i, bet=test, answer=answer(test),
                          shots=[dict(bet=b, answer=answer(b)) for b in shot_bets]))
    return items


def items_hash(items):
    return hashlib.sha256(json.dumps(items, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def render(item, n_shots=None):
    """The prompt with the last `n_shots` shots (all by default) before the test question."""
    shots = item["shots"] if n_shots is None else item["shots"][len(item["shots"]) - n_shots:]
    return "".join(f"{question(s['bet'])} {s['answer']}\n\n" for s in shots) + question(item["bet"])


class QuestionTooLong(ValueError):
    """The task cannot be posed to a model whose context is shorter than one question."""


def fit_prompt(item, tok, seq_len, options=OPTIONS):
    """(prompt, shots used): as many shots as fit `seq_len` with <|endoftext|> and the longest option, dropping the
    earliest first; the question is never truncated."""
    opt = max(len(tok.encode(o)) for o in options)
    for k in range(len(item["shots"]), -1, -1):
        prompt = render(item, k)
        if 1 + len(tok.encode(prompt)) + opt - 1 <= seq_len:
            return prompt, k
    raise QuestionTooLong(f"item {item['id']}: the question alone does not fit a context of {seq_len} tokens")


# ----------------------------------------------------------------------------- evaluation

def _stderr(acc, n):
    return math.sqrt(acc * (1 - acc) / n) if n else float("nan")


def evaluate_model(model, tok, items, batch_size=16):
    """Accuracy of ranking " Y" vs " N" by summed log-probability, with per-item results."""
    fitted = [fit_prompt(it, tok, model.cfg.seq_len) for it in items]
    scores = batch_option_logprobs(model, tok, [(p, OPTIONS) for p, _ in fitted], batch_size=batch_size)
    n_opt_tok = [len(tok.encode(o)) for o in OPTIONS]
    per_item, correct, correct_norm = [], 0, 0
    for it, (prompt, k), lp in zip(items, fitted, scores):
        pred = OPTIONS[max(range(len(OPTIONS)), key=lambda j: lp[j])].strip()
        norm = [s / m for s, m in zip(lp, n_opt_tok)]
        pred_norm = OPTIONS[max(range(len(OPTIONS)), key=lambda j: norm[j])].strip()
        correct += pred == it["answer"]
        correct_norm += pred_norm == it["answer"]
        per_item.append(dict(id=it["id"], answer=it["answer"], pred=pred, correct=pred == it["answer"],
                             logprob_Y=lp[0], logprob_N=lp[1], shots_used=k, prompt_tokens=1 + len(tok.encode(prompt))))
    n = len(items)
    acc = correct / n if n else float("nan")
    res = dict(accuracy=acc, stderr=_stderr(acc, n), n=n,
               frac_pred_Y=sum(r["pred"] == "Y" for r in per_item) / max(1, n),
               mean_shots_used=sum(r["shots_used"] for r in per_item) / max(1, n),
               shots_available=len(items[0]["shots"]) if items else 0,
               option_tokens=dict(zip((o.strip() for o in OPTIONS), n_opt_tok)), per_item=per_item)
    if len(set(n_opt_tok)) > 1:  # length normalisation changes the ranking only when option lengths differ
        res["accuracy_norm"] = correct_norm / n if n else float("nan")
    return res


def evaluate(run_dir, items, device=None, batch_size=16):
    """Evaluate a run directory's newest verified checkpoint: dict(accuracy, stderr, n, per_item, ...)."""
    run = load(run_dir, device)
    return evaluate_model(run.model, run.tok, items, batch_size)


def evaluate_ladder(runs, items=None, device=None, batch_size=16, force=False):
    """runs: list of (name, run_dir, compute). Evaluates each run (cached in run_dir/hindsight.json, reused when
    the items' hash, the checkpoint and the cache version match) and returns one summary dict per run."""
    items = generate_items() if items is None else items
    h = items_hash(items)
    out = []
    for name, run_dir, compute in runs:
        path = Path(run_dir) / CACHE_NAME
        ckpt = checkpoint_id(run_dir)
        cached = json.loads(path.read_text()) if path.exists() and not force else None
        if cached and cached.get("items_sha256") == h and cached.get("checkpoint") == ckpt \
                and cached.get("version") == CACHE_VERSION:
            res = cached
        else:
            res = dict(evaluate(run_dir, items, device, batch_size), items_sha256=h, checkpoint=ckpt,
                       version=CACHE_VERSION)
            atomic_write_json(path, res)
        out.append(dict({k: v for k, v in res.items() if k != "per_item"}, name=name, run_dir=str(run_dir),
                        compute=compute))
    return out


def trend(results):
    """Least-squares slope of accuracy against log10(compute): 'rises', 'falls' or 'flat' (within 2 s.e.)."""
    rs = [r for r in results if r.get("compute")]
    if len({r["compute"] for r in rs}) < 2:
        return dict(slope_per_decade=float("nan"), stderr=float("nan"), direction="unknown")
    xs = [math.log10(r["compute"]) for r in rs]
    mx = sum(xs) / len(xs)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * r["accuracy"] for x, r in zip(xs, rs)) / sxx
    se = math.sqrt(sum(((x - mx) / sxx) ** 2 * r["stderr"] ** 2 for x, r in zip(xs, rs)))  # binomial noise only
    direction = "flat" if abs(slope) <= 2 * se else ("rises" if slope > 0 else "falls")
    return dict(slope_per_decade=slope, stderr=se, direction=direction)


def plot(results, path):
    """Figure-3 analogue: hindsight-neglect accuracy vs training compute (log x), stderr bars, chance at 50%."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rs = sorted(results, key=lambda r: r["compute"])
    x = [r["compute"] for r in rs]
    y = [100 * r["accuracy"] for r in rs]
    e = [100 * r["stderr"] for r in rs]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(x, y, yerr=e, fmt="o-", capsize=4, color="tab:blue", label="our models")
    for r, xi, yi in zip(rs, x, y):
        ax.annotate(r["name"], (xi, yi), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
    ax.axhline(50, ls="--", color="gray", label="chance")
    ax.set_xscale("log")
    ax.set_ylim(0, 105)
    ax.set_xlabel("training compute (FLOPs)")
    ax.set_ylabel("accuracy (%)")
    t = trend(rs)
    n = rs[0]["n"] if rs else 0
    ax.set_title(f"Inverse scaling prize: hindsight neglect (n={n})\naccuracy {t['direction']} with compute")
    ax.legend(loc="lower left")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
