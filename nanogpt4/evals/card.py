"""`nanogpt4 report <run>`: the eval report card of one model — the report's eight benchmarks in both modes, a
calibration diagram (beside a second model's with --compare, e.g. base vs post-trained: the report's Figure 8)
and the contamination check of every benchmark item against the training corpus.

Writes <run>/evals/: records/*.jsonl (one per benchmark, resumable), benchmarks.json, calibration.png and
report.md. The headline of a benchmark is the lower of its score on all items and on the items the contamination
check finds clean (the report's rule); both are shown with the contaminated fraction.
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
CALIBRATION_EVAL = "mmlu-letter"


def item_text(item):
    """All the text of an item (question, options, passages, answers), for the contamination probes."""
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        return " ".join(item_text(v) for k, v in item.items() if k not in ("id", "label", "subject"))
    if isinstance(item, (list, tuple)):
        return " ".join(item_text(v) for v in item)
    return ""


def run_benchmarks(run, out, reg, max_samples=None, threads=4, log=print, device=None):
    """Every benchmark spec of SETS on the model in `run`; returns {eval name: (spec, report, records path)}."""
    fn = completion.LocalCompletion(run, device=device)
    results = {}
    for name in reg.resolve(SETS):
        spec = reg.get_eval(name)
        path = Path(out) / "records" / f"{spec.key}.jsonl"
        t0 = time.time()
        report = run_eval(spec, reg, [fn], path, max_samples=max_samples, threads=threads, log=log)
        report["seconds"] = round(time.time() - t0, 1)
        log(f"  {name}: {report.get('score', float('nan')):.3f} ± {report.get('stderr', float('nan')):.3f} "
            f"(chance {report.get('chance', 0):.3f}, n {report['n']}, {report['seconds']} s)")
        results[name] = (spec, report, path)
    return results


def contamination(results, reg, corpus, cache, log=print):
    """Per benchmark: contaminated fraction of its evaluated items, the score on the clean ones, the headline."""
    t0 = time.time()
    index = K.CorpusIndex.load_or_build(corpus, cache)
    out = {}
    for name, (spec, report, path) in results.items():
        items = dict(select(eval_class(spec.cls)([None], reg, spec, **spec.args).samples(), None))
        _, events, _ = read(path)
        done = {e["sample_id"]: e["data"] for e in events if e["type"] == "sample"}
        flags = K.check(index, {sid: item_text(items[int(sid.rsplit(".", 1)[1])]) for sid in done})
        metric = report.get("metric", "acc")
        key = {"acc": "correct", "acc_norm": "correct", "exact_match": "exact_match", "f1": "f1",
               "pass@1": "pass@1"}.get(metric, "correct")
        clean = [float(d[key]) for sid, d in done.items() if not flags[sid]]
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


def write_card(run, out, results, contam, contam_seconds, curves, total_seconds):
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
    p.add_argument("--compare", default=None, help="a second run for the calibration plot (e.g. post-trained)")
    p.add_argument("--corpus", default="runs/default/corpus/train.jsonl", help="training corpus for contamination")
    p.add_argument("--max-samples", type=int, default=None, help="cap items per benchmark (quick looks)")
    p.add_argument("--threads", type=int, default=4, help="samples evaluated in parallel")
    p.add_argument("--out", default=None, help="default: <run>/evals")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, … (default: cuda when present)")


def main(args):
    t0 = time.time()
    out = Path(args.out or Path(args.run) / "evals")
    reg = R.default_registry()
    print(f"benchmarks on {args.run}")
    results = run_benchmarks(args.run, out, reg, args.max_samples, args.threads, device=args.device)
    curves = {str(args.run): calibration_curve(results[CALIBRATION_EVAL][2])}
    if args.compare:
        print(f"calibration of {args.compare}")
        spec = reg.get_eval(CALIBRATION_EVAL)
        path = out / "records" / f"{spec.key}.compare.jsonl"
        run_eval(spec, reg, [completion.LocalCompletion(args.compare, device=args.device)], path, max_samples=args.max_samples,
                 threads=args.threads)
        label = str(args.compare) if str(args.compare) != str(args.run) else f"{args.compare} (again)"
        curves[label] = calibration_curve(path)
    CAL.plot(curves, out / "calibration.png", title="MMLU calibration (letter mode)")
    contam, contam_s = contamination(results, reg, args.corpus, Path(args.corpus).parent / "contamination")
    summary = {name: dict(report=r, contamination=contam[name], spec=spec.key) for name, (spec, r, _) in results.items()}
    summary["_calibration"] = {k: dict(ece=CAL.reliability(*v)[1], items=len(v[0])) for k, v in curves.items()}
    summary["_seconds"] = dict(total=time.time() - t0, contamination=contam_s)
    atomic_write_json(out / "benchmarks.json", summary)
    write_card(args.run, out, results, contam, contam_s, curves, time.time() - t0)
    print(f"wrote {out / 'report.md'} ({(time.time() - t0) / 60:.1f} min)")
    if any(math.isnan(v["report"].get("score", 0.0)) for k, v in summary.items() if not k.startswith("_")):
        raise SystemExit("some benchmark produced no score")
