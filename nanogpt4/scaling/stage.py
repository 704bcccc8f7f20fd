"""`nanogpt4 scaling <step>`: predictable scaling, step by step, or `all` of it in order.

  tokenizer  the ladder's small-vocabulary tokenizer and token shards (from the main job's corpus)
  ladder     train the small runs (skipping finished ones)
  predict    fit the laws and register the target's loss prediction (refused once the target has started)
  target     train the target (refused without a registered prediction for exactly this config)
  verify     compare the target with the registration; Figure 1 PNGs + verify_loss.json
  hindsight  the inverse-scaling task across the ladder and the target; Figure 3 PNG + hindsight.json
"""
import argparse
import json
from pathlib import Path

from ..common import atomic_write_json
from . import hindsight, ladder as L, predict, registry

def paths(out):
    out = Path(out)
    return dict(tokenizer=out / "tokenizer", tokens=out / "tokenizer" / "tokens", ladder=out / "ladder.json",
                record=out / "prediction_loss.json", target=out / "target")


def step_tokenizer(args, preset, p):
    from ..pipeline import run_stage
    run_stage("tokenizer", ["--corpus", args.corpus, "--out", str(p["tokenizer"]), "--vocab-size", str(preset.vocab_size)])


def step_ladder(args, preset, p):
    rows = L.run_ladder(args.out, p["tokens"], preset, quiet=args.quiet)
    atomic_write_json(p["ladder"], dict(preset=args.preset, runs=rows))


def step_predict(args, preset, p):
    if p["record"].exists():
        print(f"{p['record']} is already registered")
        return
    rows = json.loads(p["ladder"].read_text())["runs"]
    rec = predict.register_loss(p["record"], L.target_config(preset), p["target"], rows)
    for m, v in rec["prediction"]["metrics"].items():
        print(f"  registered {m}: {v['loss']:.4f} [{v['interval'][0]:.4f}, {v['interval'][1]:.4f}] "
              f"at {rec['prediction']['target_compute']:.3e} FLOPs (sha256 {rec['record_sha256'][:12]})")


def step_target(args, preset, p):
    tc = L.target_config(preset)
    if not p["record"].exists():
        raise registry.RegistryError(f"no registered prediction at {p['record']}: run `nanogpt4 scaling predict` first")
    registry.check_target(registry.load(p["record"]), tc.to_dict())
    done = L.train_run(tc, p["target"], p["tokens"], quiet=args.quiet)
    print(f"  target: {done['params'] / 1e6:.2f}M params, {done['flops']:.3e} FLOPs, "
          + "  ".join(f"{k} {v:.4f}" for k, v in done["final"].items()))


def step_verify(args, preset, p):
    res = predict.verify_loss(p["record"], p["target"], args.out)
    for m, v in res["metrics"].items():
        print(f"  {m}: predicted {v['predicted']:.4f} [{v['interval'][0]:.4f}, {v['interval'][1]:.4f}], "
              f"measured {v['measured']:.4f}, error {v['rel_error']:+.2%}")


def step_hindsight(args, preset, p):
    rows = json.loads(p["ladder"].read_text())["runs"]
    done = json.loads((p["target"] / "done.json").read_text())
    runs = [(r["name"], r["run"], r["compute"]) for r in rows] + [("target", str(p["target"]), done["flops"])]
    results = hindsight.evaluate_ladder(runs)
    trend = hindsight.trend(results)
    hindsight.plot(results, Path(args.out) / "fig3_hindsight.png")
    atomic_write_json(Path(args.out) / "hindsight.json", dict(runs=results, trend=trend))
    for r in results:
        print(f"  {r['name']}: accuracy {r['accuracy']:.3f} ± {r['stderr']:.3f} (n={r['n']}, "
              f"answers Y {r['frac_pred_Y']:.0%})")
    print(f"  accuracy {trend['direction']} with compute: {trend['slope_per_decade']:+.3f} ± {trend['stderr']:.3f} per decade")


STEPS = dict(tokenizer=step_tokenizer, ladder=step_ladder, predict=step_predict, target=step_target,
             verify=step_verify, hindsight=step_hindsight)


def add_args(p):
    p.add_argument("step", choices=list(STEPS) + ["all"])
    p.add_argument("--out", default="runs/default/scaling")
    p.add_argument("--corpus", default="runs/default/corpus", help="the corpus from `nanogpt4 data`")
    p.add_argument("--preset", choices=sorted(L.PRESETS), default="cpu")
    p.add_argument("--quiet", action=argparse.BooleanOptionalAction, default=True, help="no per-run progress bars")


def main(args):
    preset, p = L.PRESETS[args.preset], paths(args.out)
    for step in STEPS if args.step == "all" else [args.step]:
        print(f"\n== scaling {step} ({args.preset})", flush=True)
        STEPS[step](args, preset, p)
