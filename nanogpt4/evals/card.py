"""`nanogpt4 report <run>`: the eval report card of one model — the report's eight benchmarks in both modes, a
calibration diagram and the contamination check of every benchmark item against the training corpus.

Writes <run>/evals/: records/*.jsonl (one per benchmark, resumable), benchmarks.json, calibration.png and
report.md. The headline of a benchmark is the lower of its score on all items and on the items the contamination
check finds clean (the report's rule); both are shown with the contaminated fraction.

`--compare RUN2` (e.g. base vs post-trained) also runs the letter-mode set on RUN2 (records in compare/records/,
same items, prompts and plain-text rendering) and adds the report's Appendix B table (both scores, their
difference with an independent and a paired standard error), Figure 7 (TruthfulQA, truthfulqa.png) and Figure 8
(both calibration diagrams side by side in calibration.png).
"""
import math
import time
from pathlib import Path

import numpy as np

from ..common import atomic_write_json, atomic_write_text
from . import calibration as CAL, completion, contamination as K, registry as R
from .recorder import read
from .run import run_eval, select
from .templates import eval_class

SETS = ("report-benchmarks", "report-benchmarks-letter")
COMPARE_SETS = ("report-benchmarks-letter",)  # what --compare runs on the second model
CALIBRATION_EVAL = "mmlu-letter"
TRUTHFULQA_EVALS = ("truthfulqa-letter", "truthfulqa")  # Figure 7: the modes run on both models are drawn
ITEM_KEY = {"acc": "correct", "acc_norm": "correct", "exact_match": "exact_match", "f1": "f1", "pass@1": "pass@1"}


def item_text(item):
    """All the text of an item (question, options, passages, answers), for the contamination probes."""
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        return " ".join(item_text(v) for k, v in item.items() if k not in ("id", "label", "subject"))
    if isinstance(item, (list, tuple)):
        return " ".join(item_text(v) for v in item)
    return ""


def run_benchmarks(run, out, reg, max_samples=None, threads=4, log=print, device=None, sets=SETS):
    """Every benchmark spec of `sets` on the model in `run` (plain-text prompts, no chat template), records under
    out/records/; returns {eval name: (spec, report, records path)}."""
    fn = completion.LocalCompletion(run, device=device)
    results = {}
    for name in reg.resolve(sets):
        spec = reg.get_eval(name)
        path = Path(out) / "records" / f"{spec.key}.jsonl"
        t0 = time.time()
        report = run_eval(spec, reg, [fn], path, max_samples=max_samples, threads=threads, log=log)
        report["seconds"] = round(time.time() - t0, 1)
        log(f"  {name}: {report.get('score', float('nan')):.3f} ± {report.get('stderr', float('nan')):.3f} "
            f"(chance {report.get('chance', 0):.3f}, n {report['n']}, {report['seconds']} s)")
        results[name] = (spec, report, path)
    return results


def item_scores(path, metric):
    """{sample id: the item's score under `metric`} from a record (its finished samples)."""
    _, events, _ = read(path)
    key = ITEM_KEY.get(metric, "correct")
    return {e["sample_id"]: float(e["data"][key]) for e in events if e["type"] == "sample"}


def compare_rows(results, compare_results):
    """Per eval run on both models: both scores ± stderr, the difference (second − first) with the independent-sample
    stderr sqrt(se1² + se2²) and, over the items both have, the mean per-item difference with its paired stderr
    (the right one: the items are the same)."""
    rows = {}
    for name, (_, r2, path2) in compare_results.items():
        if name not in results:
            continue
        _, r1, path1 = results[name]
        metric = r1.get("metric", "acc")
        a, b = item_scores(path1, metric), item_scores(path2, metric)
        both = sorted(set(a) & set(b))
        d = np.array([b[i] - a[i] for i in both], dtype=float)
        nan = float("nan")
        s1, e1, s2, e2 = (r1.get("score", nan), r1.get("stderr", nan), r2.get("score", nan), r2.get("stderr", nan))
        rows[name] = dict(benchmark=r1.get("benchmark", name), mode=r1.get("mode"), metric=metric, chance=r1.get("chance"),
                          score=s1, stderr=e1, compare_score=s2, compare_stderr=e2, diff=s2 - s1,
                          diff_stderr=math.sqrt(e1 ** 2 + e2 ** 2),
                          diff_paired=float(d.mean()) if len(d) else nan,
                          diff_stderr_paired=float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else nan,
                          n=len(both), n_run=r1["n"], n_compare=r2["n"],
                          shots=r1.get("shots_used_mean"), compare_shots=r2.get("shots_used_mean"),
                          truncated=r1.get("truncated"), compare_truncated=r2.get("truncated"))
    return rows


def compare_lines(compare):
    """The side-by-side table of benchmarks.json's "_compare" (markdown lines; the card and report.md show it)."""
    run, run2, rows = compare["run"], compare["run2"], compare["rows"]
    lines = [f"| benchmark | mode | metric | `{run}` | `{run2}` | difference (second − first) ± independent stderr | "
             "paired difference ± paired stderr | items |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows.values():
        items = str(r["n"]) if r["n_run"] == r["n_compare"] == r["n"] else f"{r['n']} ({r['n_run']} / {r['n_compare']})"
        lines.append(f"| {r['benchmark']} | {r['mode']} | {r['metric']} | {r['score']:.3f} ± {r['stderr']:.3f} | "
                     f"{r['compare_score']:.3f} ± {r['compare_stderr']:.3f} | {r['diff']:+.3f} ± {r['diff_stderr']:.3f} | "
                     f"**{r['diff_paired']:+.3f} ± {r['diff_stderr_paired']:.3f}** | {items} |")
    return lines


def compare_verdict(rows):
    """One sentence: on how many benchmarks the second model differs by more than two paired stderrs, and which way."""
    up = [r["benchmark"] for r in rows.values() if r["diff_paired"] > 2 * r["diff_stderr_paired"]]
    down = [r["benchmark"] for r in rows.values() if r["diff_paired"] < -2 * r["diff_stderr_paired"]]
    same = len(rows) - len(up) - len(down)
    return (f"Beyond two paired standard errors: higher on {', '.join(up) or 'none'}; lower on "
            f"{', '.join(down) or 'none'}; within noise on {same} of {len(rows)}.")


def plot_truthfulqa(bars, path, chance=None):
    """Figure 7: bars {mode: {model label: (accuracy, stderr)}} → grouped bars with stderr error bars and the
    chance line (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = list(dict.fromkeys(k for group in bars.values() for k in group))
    width = 0.8 / max(1, len(labels))
    fig, ax = plt.subplots(figsize=(1.6 + 2.2 * len(bars), 4.2))
    for j, label in enumerate(labels):
        xs = [i + (j - (len(labels) - 1) / 2) * width for i, g in enumerate(bars.values()) if label in g]
        vals = [g[label] for g in bars.values() if label in g]
        ax.bar(xs, [v[0] for v in vals], width=width * 0.95, yerr=[v[1] for v in vals], capsize=4, label=label)
        for x, v in zip(xs, vals):
            ax.text(x, v[0] + v[1] + 0.01, f"{v[0]:.3f}", ha="center", fontsize=8)
    if chance is not None:
        ax.axhline(chance, color="k", ls="--", lw=1, label=f"chance {chance:.3f}")
    ax.set_xticks(range(len(bars)), list(bars))
    ax.set(ylim=(0, 1), ylabel="accuracy (MC1)", title="TruthfulQA")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def contamination(results, reg, corpus, cache, log=print):
    """Per benchmark: contaminated fraction of its evaluated items, the score on the clean ones, the headline."""
    t0 = time.time()
    index = K.CorpusIndex.load_or_build(corpus, cache)
    out = {}
    for name, (spec, report, path) in results.items():
        items = dict(select(eval_class(spec.cls)([None], reg, spec, **spec.args).samples(), None))
        scores = item_scores(path, report.get("metric", "acc"))
        flags = K.check(index, {sid: item_text(items[int(sid.rsplit(".", 1)[1])]) for sid in scores})
        clean = [s for sid, s in scores.items() if not flags[sid]]
        frac = sum(flags.values()) / max(1, len(flags))
        clean_score = float(np.mean(clean)) if clean else float("nan")
        score = report.get("score", float("nan"))
        out[name] = dict(contaminated=frac, items=len(flags), clean_items=len(clean), score=score,
                         clean_score=clean_score, headline=min(score, clean_score) if clean else score)
    log(f"  contamination check of {sum(v['items'] for v in out.values())} items: {time.time() - t0:.1f} s")
    return out, time.time() - t0


def calibration_curve(path):
    _, events, _ = read(path)
    recs = [e["data"] for e in events if e["type"] == "sample"]
    return [max(r["probs"]) for r in recs], [r["correct"] for r in recs]


def compare_section(compare):
    """The card's base-vs-second-model section (Appendix B's table, Figures 7 and 8) from benchmarks.json's _compare."""
    run, run2, rows = compare["run"], compare["run2"], compare["rows"]
    names = ", ".join(f"`{n}`" for n in rows)
    differ = [r["benchmark"] for r in rows.values() if r["shots"] != r["compare_shots"]
              or r["truncated"] != r["compare_truncated"]]
    lines = [f"## `{run}` vs `{run2}` (the report's Appendix B, Figures 7 and 8)", "",
             f"`{run2}` ran the letter-mode set ({names}) on the same items with the same few-shot examples and prompt "
             "formats, through the same completion function as the first model (`LocalCompletion`: openai/evals' "
             "plain-text rendering, no chat template, greedy letter ranking), so any difference is the weights. "
             "Score ± stderr (binomial); the difference is second − first. The independent-sample stderr "
             "sqrt(se₁² + se₂²) ignores that the items are the same; the paired one (the stderr of the per-item "
             "difference over the items both models answered, in bold) is the one to read. Likelihood mode and the "
             "generation benchmarks (HumanEval, DROP, GSM-8K) are on the first model only. Records: "
             "`compare/records/`.", ""]
    lines += compare_lines(compare)
    lines += ["", compare_verdict(rows)]
    if differ:
        lines += ["", "Shots used or truncation differ between the models on: " + ", ".join(differ)
                  + " (their contexts or tokenizers differ, so their prompts do too)."]
    if any(n in rows for n in TRUTHFULQA_EVALS):
        lines += ["", "![TruthfulQA](truthfulqa.png)", "",
                  "Figure 7: TruthfulQA MC1 accuracy of both models ± one stderr; the dashed line is chance (the "
                  "mean of 1 / options)."]
    cal = compare["calibration"]
    lines += ["", f"Figure 8 (calibration, below): ECE {cal['run']:.3f} for `{run}`, {cal['compare']:.3f} for `{run2}`.", ""]
    return "\n".join(lines)


def write_card(run, out, results, contam, contam_seconds, curves, total_seconds, compare=None):
    rows = []
    for name, (spec, r, _) in results.items():
        c = contam.get(name, {})
        stderr = r.get("stderr", float("nan"))
        extra = "".join(f" ({k} {v:.3f})" for k, v in r.items() if k.startswith("pass@") and k != "pass@1")
        rows.append(f"| {r.get('benchmark', name)} | {r.get('mode')} | {r.get('metric')}{extra} | "
                    f"{r.get('score', float('nan')):.3f} ± {stderr:.3f} | {r.get('chance', 0):.3f} | "
                    f"{r.get('shots_requested')} / {r.get('shots_used_mean', 0):.1f} | {r['n']} | "
                    f"{r.get('truncated', 0)} | {100 * c.get('contaminated', 0):.1f}% | "
                    f"{c.get('clean_score', float('nan')):.3f} | **{c.get('headline', float('nan')):.3f}** |")
    formats = "\n".join(f"- {r.get('benchmark', n)} ({r.get('mode')}): `{r.get('format', '')}`".replace("\n", "\\n")
                        for n, (_, r, _) in results.items())
    cal = "\n".join(f"- {label}: ECE {CAL.reliability(*curve)[1]:.3f} over {len(curve[0])} items"
                    for label, curve in curves.items())
    from .execution import isolation
    iso = isolation()
    sandbox = (f"network namespace {'yes' if iso['network_namespace'] else 'no'}, socket filter "
               f"{'yes' if iso['socket_filter'] else 'no'}, process limit {'yes' if iso['process_limit'] else 'no'}"
               + (f" ({iso['reason']})" if iso["reason"] else "") + ".")
    md = f"""# Eval report card: `{run}`

Benchmarks of the GPT-4 report (its Table 2), run by `nanogpt4 report` in {total_seconds / 60:.1f} min on this
machine. Items are subsampled with a fixed seed; few-shot examples come from items that are not evaluated, and
shots are dropped (last first) when a prompt exceeds the model's context: "shots" shows requested / mean used.
"truncated" counts items that did not fit even without shots (their context lost tokens from the left). Scores
are ± one standard error (binomial for accuracies, of the mean for F1). Likelihood mode ranks option
log-probabilities (per character for HellaSwag and ARC); letter mode shows lettered options and ranks the letters.
A score near chance is what a model of this size gets: nothing here was tuned on test items.

| benchmark | mode | metric | score | chance | shots | items | truncated | contaminated | clean score | headline |
|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|
{chr(10).join(rows)}

Prompt formats ({{…}} filled per item; shots are whole examples in the same format, separated by a blank line):
{formats}

## Contamination

The report's method (its Appendix C): every item's text (question, options, passage, answers) and the training
corpus are normalised to letters and digits; three random 50-character substrings of the item (the whole item if
shorter) are looked up in a hash index of every 50-character window of the corpus, hits confirmed against the
text. Contaminated items are excluded for the clean score; the headline is the lower of the two scores. Checking
all benchmarks took {contam_seconds:.1f} s (index build included when it was not cached).

{compare_section(compare) if compare else ""}
## Calibration

![calibration](calibration.png)

Reliability of the letter-mode MMLU answers (confidence = the probability of the chosen letter, normalised over
the option letters), the report's Figure 8; expected calibration error over 10 bins:
{cal}

## Sandbox

HumanEval's programs ran in `nanogpt4/evals/execution.py`'s sandbox; isolation in force on this machine (probed):
{sandbox}

Records (one JSONL per benchmark, sample by sample): `records/`. `nanogpt4 eval show <record>` prints them.
"""
    atomic_write_text(Path(out) / "report.md", md)


def add_args(p):
    p.add_argument("run", help="a run directory with a checkpoint")
    p.add_argument("--compare", default=None, help="a second run (e.g. post-trained): its letter-mode benchmarks "
                   "side by side with the run's, TruthfulQA and calibration")
    p.add_argument("--corpus", default="runs/default/corpus/train.jsonl", help="training corpus for contamination")
    p.add_argument("--max-samples", type=int, default=None, help="cap items per benchmark (quick looks)")
    p.add_argument("--threads", type=int, default=4, help="samples evaluated in parallel")
    p.add_argument("--out", default=None, help="default: <run>/evals")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, … (default: cuda when present)")


def labels(run, compare):
    """The two models' names on the card and in the figures (the same run twice is told apart)."""
    return str(run), str(compare) if str(compare) != str(run) else f"{compare} (again)"


def main(args):
    t0 = time.time()
    out = Path(args.out or Path(args.run) / "evals")
    reg = R.default_registry()
    print(f"benchmarks on {args.run}")
    results = run_benchmarks(args.run, out, reg, args.max_samples, args.threads, device=args.device)
    curves = {str(args.run): calibration_curve(results[CALIBRATION_EVAL][2])}
    compare = None
    if args.compare:
        t1 = time.time()
        print(f"letter-mode benchmarks on {args.compare} (compared with {args.run})")
        compare_results = run_benchmarks(args.compare, out / "compare", reg, args.max_samples, args.threads,
                                         device=args.device, sets=COMPARE_SETS)
        first, second = labels(args.run, args.compare)
        curves[second] = calibration_curve(compare_results[CALIBRATION_EVAL][2])
        rows = compare_rows(results, compare_results)
        compare = dict(run=str(args.run), run2=str(args.compare), sets=list(COMPARE_SETS), rows=rows,
                       calibration=dict(run=CAL.reliability(*curves[first])[1], compare=CAL.reliability(*curves[second])[1]),
                       seconds=round(time.time() - t1, 1))
        bars = {f"{rows[n]['mode']} mode": {first: (rows[n]["score"], rows[n]["stderr"]),
                                  second: (rows[n]["compare_score"], rows[n]["compare_stderr"])}
                for n in TRUTHFULQA_EVALS if n in rows}
        if bars:
            plot_truthfulqa(bars, out / "truthfulqa.png", chance=next(rows[n]["chance"] for n in TRUTHFULQA_EVALS if n in rows))
        for r in rows.values():
            print(f"  {r['benchmark']} ({r['mode']}): {r['score']:.3f} → {r['compare_score']:.3f}, paired difference "
                  f"{r['diff_paired']:+.3f} ± {r['diff_stderr_paired']:.3f} (n {r['n']})")
    CAL.plot(curves, out / "calibration.png", title="MMLU calibration (letter mode)")
    contam, contam_s = contamination(results, reg, args.corpus, Path(args.corpus).parent / "contamination")
    summary = {name: dict(report=r, contamination=contam[name], spec=spec.key) for name, (spec, r, _) in results.items()}
    summary["_calibration"] = {k: dict(ece=CAL.reliability(*v)[1], items=len(v[0])) for k, v in curves.items()}
    if compare:
        summary["_compare"] = compare
    summary["_seconds"] = dict(total=time.time() - t0, contamination=contam_s,
                               **(dict(compare=compare["seconds"]) if compare else {}))
    atomic_write_json(out / "benchmarks.json", summary)
    write_card(args.run, out, results, contam, contam_s, curves, time.time() - t0, compare)
    print(f"wrote {out / 'report.md'} ({(time.time() - t0) / 60:.1f} min)")
    scores = [v["report"].get("score", 0.0) for k, v in summary.items() if not k.startswith("_")]
    scores += [r["compare_score"] for r in (compare or {}).get("rows", {}).values()]
    if any(math.isnan(x) for x in scores):
        raise SystemExit("some benchmark produced no score")
