"""`nanogpt4 run`: the main job. Runs every stage in order on a preset — each stage exactly as its own CLI
command would, skipping stages whose outputs are complete — then writes the report card. The serve stage is a
smoke test: it starts the API, exercises it through the openai client and stops (no server is left running).

As in the GPT-4 report, the base model is the scaling stage's target: the ladder is trained on the main tokenizer,
the base model's loss is registered, and only then is the base model pretrained (`nanogpt4 pretrain --registered`,
inside `nanogpt4 scaling all`). Its size, horizon and vocabulary are the ladder preset's (scaling/ladder.py)."""
import json
import shlex
import time
from dataclasses import replace
from pathlib import Path

from .cli import run_stage
from .common import atomic_write_json
from .scaling import ladder

# The presets: per stage after the base model, what the main job adds to that stage's own command. The base model
# and its ladder are the scaling preset of the same name (scaling/ladder.py PRESETS), the one place they are set.
# "cpu" is the CPU default (≤ 90 min on 2 cores); "long" the report's 1/1,000 ratio on a CPU (hours, resumable);
# "gpu" a Chinchilla-horizon run for one GPU; "tiny" for tests.
PRESETS = {
    "cpu": dict(long_context=[], posttrain=[], vision_data=[], vision=["--compile"], evals=[]),
    "long": dict(long_context=[], posttrain=[], vision_data=[], vision=["--compile"], evals=[]),
    "gpu": dict(long_context=["--steps", "300"], posttrain=[], vision_data=[], vision=["--compile"],
                evals=[]),
    "tiny": dict(long_context=["--steps", "4", "--batch-size", "2", "--eval-windows", "4"],
                 posttrain=["--steps", "4"],  # each post-training trainer's horizon: a peek
                 vision_data=["--train-per-task", "40", "--heldout-per-task", "8", "--tasks", "colour,shape,count,compare"],
                 vision=["--align-steps", "2", "--joint-steps", "4"],
                 evals=["--max-samples", "2"]),  # the report card: every benchmark item, or a peek
}


LONG_PRICES = dict(prompt=0.06, completion=0.12)  # twice the base's, as GPT-4-32k's were GPT-4-8k's (USD per 1K)


def posttrain(stage, out, args):
    """The post-training stages on the base model: data, SFT, reward model, RLHF (with the RBRM), DPO, then the
    behaviour of all four on held-out prompts."""
    data, steps = out / "posttrain" / "data", PRESETS[args.preset]["posttrain"]
    stage("posttrain-data", ["--out", str(data)] + (["--cache", args.cache] if args.cache else []),
          "posttrain/data/manifest.json")
    stage("sft", ["--base", str(out / "pretrain"), "--data", str(data / "sft.jsonl"), "--out", str(out / "sft"),
                  "--resume"] + steps, "sft/done.json")
    stage("rm", ["--sft", str(out / "sft"), "--pairs", str(data / "pairs.jsonl"), "--human-pairs", str(data / "human_pairs.jsonl"),
                 "--out", str(out / "rm"), "--resume"] + steps, "rm/done.json")
    stage("rlhf", ["--sft", str(out / "sft"), "--rm", str(out / "rm"), "--prompts", str(data / "prompts.jsonl"),
                   "--rbrm-data", str(data), "--out", str(out / "rlhf"), "--resume"] + steps, "rlhf/done.json")
    stage("dpo", ["--sft", str(out / "sft"), "--pairs", str(data / "pairs.jsonl"), "--out", str(out / "dpo"),
                  "--resume"] + steps, "dpo/done.json")
    models = ",".join(f"{name}={out / name}" for name in ("pretrain", "sft", "rlhf", "dpo")).replace("pretrain=", "base=", 1)
    stage("behaviour", ["--models", models, "--data", str(data), "--out", str(out / "posttrain"), "--rm", str(out / "rm")]
          + (["--per-category", "4"] if args.preset == "tiny" else []), "posttrain/behaviour.json")


def vision(stage, out, args):
    """The vision stage on the SFT model: the image sets, then the encoder and the joint tuning, measured on every
    held-out task; then the models file with every served snapshot."""
    data = out / "vision" / "data"
    stage("vision-data", ["--out", str(data)] + (["--cache", args.cache] if args.cache else []) + PRESETS[args.preset]["vision_data"],
          "vision/data/manifest.json")
    stage("vision", ["--base", str(out / "sft"), "--data", str(data), "--text", str(out / "posttrain" / "data" / "sft.jsonl"),
                     "--out", str(out / "vision" / "run"), "--resume"] + PRESETS[args.preset]["vision"], "vision/run/done.json")
    from .serve import models as snapshots
    n = json.loads((out / "pretrain-long" / "done.json").read_text())["seq_len"]
    long = f"nano4-base-{n}"
    served = snapshots.write(out / "models.yaml", {"nano4-base": out / "pretrain", long: out / "pretrain-long",
                                                    "nano4-sft": out / "sft", "nano4": out / "rlhf",
                                                    "nano4-dpo": out / "dpo", "nano4-vision": out / "vision" / "run"},
                             {"nano4": "nano4"}, settings={long: dict(prices=LONG_PRICES, context_length=n)})
    print(f"models file for `nanogpt4 serve --models {out / 'models.yaml'}`: {', '.join(served.names())}")


def add_args(p):
    p.add_argument("--out", default="runs/default", help="work directory for every stage's outputs")
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="model size and training horizon")
    p.add_argument("--sources", default=None, help="comma list of corpus sources (default: all)")
    p.add_argument("--vocab-size", type=int, default=None, help="tokenizer vocabulary size (default: the preset's)")
    p.add_argument("--cache", default=None, help="download cache (default ~/.cache/nanogpt4)")


def main(args):
    if args.vocab_size:  # before any work: the ladder's fit runs must stay within their share of the base's compute
        ladder.check_preset(replace(ladder.PRESETS[args.preset], vocab_size=args.vocab_size))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings_path = out / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}

    def stage(name, argv, marker):
        """Run a stage; keep the timing of the run that did the work, not of a later one that skipped it."""
        was_done = (out / marker).exists()
        _, secs = run_stage(name, argv)
        if not (was_done and name in timings):
            timings[name] = dict(seconds=round(secs, 1), command=f"nanogpt4 {name} {shlex.join(argv)}",
                                 at=time.strftime("%Y-%m-%dT%H:%M:%S"))
            atomic_write_json(timings_path, timings)

    data = ["--out", str(out / "corpus")]
    if args.sources:
        data += ["--sources", args.sources]
    if args.cache:
        data += ["--cache", args.cache]
    stage("data", data, "corpus/manifest.json")
    tokens, vocab = out / "tokenizer" / "tokens", args.vocab_size or ladder.PRESETS[args.preset].vocab_size
    stage("tokenizer", ["--corpus", str(out / "corpus"), "--out", str(out / "tokenizer"), "--vocab-size", str(vocab)],
          "tokenizer/tokens/meta.json")
    # the ladder, the registered prediction, then the base model itself (the target), verified against it
    stage("scaling", ["all", "--out", str(out / "scaling"), "--corpus", str(out / "corpus"), "--tokens", str(tokens),
                      "--target", str(out / "pretrain"), "--preset", args.preset], "scaling/humaneval.json")
    # the 8K → 32K analogue: the base model at 4× its context, its own served snapshot
    stage("long-context", ["--base", str(out / "pretrain"), "--tokens", str(tokens), "--out", str(out / "pretrain-long"),
                           "--resume"] + PRESETS[args.preset]["long_context"], "pretrain-long/done.json")
    from . import report, runs, sample
    from .engine import Engine
    run = runs.load(out / "pretrain")
    engine = Engine(run.model, run.tok)
    prompts = ["The ", "In the beginning", "def main(", "Call me Ishmael."]
    t = time.perf_counter()
    samples = [dict(prompt=p, completion=sample.complete(engine, p, max_new_tokens=80, seed=i, num=1)[0][0])
               for i, p in enumerate(prompts)]
    atomic_write_json(out / "samples.json", samples)
    timings["sample"] = dict(seconds=round(time.perf_counter() - t, 1), command="nanogpt4.sample.complete (engine)")
    atomic_write_json(timings_path, timings)
    stage("serve", ["--run", str(out / "pretrain"), "--smoke", str(out / "serve_smoke.json")], "serve_smoke.json")
    posttrain(stage, out, args)
    vision(stage, out, args)
    stage("report", [str(out / "pretrain"), "--out", str(out / "evals"), "--corpus", str(out / "corpus" / "train.jsonl"),
                     "--compare", str(out / "rlhf")] + PRESETS[args.preset]["evals"], "evals/report.md")
    path = report.write(out)
    print(f"\nreport card: {path}")
