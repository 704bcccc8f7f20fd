"""`nanogpt4 eval …`: run registry evals against any completion function, record them, show the records.

  nanogpt4 eval run test-match arithmetic --model runs/default/pretrain        # a local checkpoint
  nanogpt4 eval run test-modelgraded --model http://localhost:8000/v1#gpt-4 --api-key sk-…   # any OpenAI-style URL
  nanogpt4 eval show runs/evals/test-match.dev.v0.jsonl --failed
  nanogpt4 eval list --registry my_registry/

Specs come from the pinned evals wheel's registry and from `--registry` directories (which override it). Samples
are evaluated by a thread pool; each gets its own rng, seeded from its id and the run seed (as in openai/evals), so
a sample's result does not depend on scheduling. Every sample is recorded as it finishes (recorder.py), so an
interrupted run resumes where it stopped. A sample that raises is recorded as an error and retried on resume; a run
where no sample finishes within --sample-timeout stops waiting instead of hanging and cancels the generation
it abandoned (so it does not run on into the next eval).
"""
import concurrent.futures as cf
import json
import random
import re
import sys
from pathlib import Path

from .. import chat
from ..common import git_commit
from . import completion, recorder, registry as R
from .templates import CUT, eval_class

SHUFFLE_SEED = 123  # openai/evals: --max-samples takes the first n of the samples shuffled with this seed


def select(samples, max_samples):
    """(index, sample) pairs: all of them, or max_samples of them chosen by a fixed shuffle."""
    idx = list(range(len(samples)))
    if max_samples and max_samples < len(idx):
        random.Random(SHUFFLE_SEED).shuffle(idx)
        idx = sorted(idx[:max_samples])
    return [(i, samples[i]) for i in idx]


def run_eval(spec, reg, completion_fns, out_path, seed=20220722, max_samples=None, threads=8, sample_timeout=600.0,
             log=print):
    """Run one eval spec; returns its final report (also the record's last line)."""
    cls = eval_class(spec.cls)
    try:
        ev = cls(completion_fns, reg, spec, **spec.args)
    except TypeError as e:
        raise R.RegistryError(f"{spec.key}: {cls.__name__} cannot take these args {sorted(spec.args)}: {e}") from None
    todo = select(ev.samples(), max_samples)
    header = dict(eval=spec.to_dict(), models=[getattr(f, "name", repr(f)) for f in completion_fns], seed=seed,
                  max_samples=max_samples, samples=len(todo), git_commit=git_commit())
    rec = recorder.Recorder(out_path, header)
    pending = [(f"{spec.key}.{i}", s) for i, s in todo if f"{spec.key}.{i}" not in rec.done]
    if len(pending) < len(todo):
        log(f"  {spec.key}: resuming, {len(todo) - len(pending)} of {len(todo)} samples already recorded")

    def one(sample_id, sample):
        CUT.tokens = 0
        data = ev.eval_sample(sample, random.Random(f"{sample_id}:{seed}".encode()))
        if CUT.tokens:  # the prompt did not fit the model's context: its left was cut, and that is recorded
            data = dict(data, prompt_tokens_cut=CUT.tokens)
        return data

    errors = 0
    pool = cf.ThreadPoolExecutor(max(1, threads))
    futures = {pool.submit(one, sid, s): sid for sid, s in pending}
    try:
        waiting = set(futures)
        while waiting:
            done, waiting = cf.wait(waiting, timeout=sample_timeout, return_when=cf.FIRST_COMPLETED)
            if not done:  # nothing finished for a whole timeout: give up on the rest instead of hanging
                for f in waiting:
                    rec.error(futures[f], seed, f"no sample finished within {sample_timeout}s")
                errors += len(waiting)
                for fn in completion_fns:  # and stop their generation, so that it does not run into later evals
                    getattr(fn, "cancel_all", lambda: None)()
                break
            for f in done:
                sid = futures[f]
                try:
                    rec.sample(sid, seed, f.result())
                except Exception as e:  # noqa: BLE001 — recorded, retried on resume
                    errors += 1
                    rec.error(sid, seed, f"{type(e).__name__}: {e}")
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    records = [rec.done[f"{spec.key}.{i}"]["data"] for i, _ in todo if f"{spec.key}.{i}" in rec.done]
    report = dict(ev.report(records), samples=len(records), errors=errors,
                  samples_cut=sum(bool(r.get("prompt_tokens_cut")) for r in records))
    rec.final(report)
    return report


def add_args(p):
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run evals (names or eval sets) against a model")
    r.add_argument("evals", nargs="+", help="eval or eval-set names (see `nanogpt4 eval list`)")
    r.add_argument("--model", required=True, help="a run directory, or URL#model of an OpenAI-compatible server")
    r.add_argument("--grader", default=None, help="completion function for model-graded evals (default: --model)")
    r.add_argument("--api-key", default=None, help="API key of the --model server")
    r.add_argument("--registry", action="append", default=[], help="extra registry root (overrides the wheel's)")
    r.add_argument("--no-wheel", action="store_true", help="only the --registry roots")
    r.add_argument("--max-samples", type=int, default=None, help="cap samples per eval (quick looks)")
    r.add_argument("--seed", type=int, default=20220722, help="seed of each sample's random choices")
    r.add_argument("--threads", type=int, default=8, help="samples evaluated in parallel")
    r.add_argument("--sample-timeout", type=float, default=600.0, help="seconds one sample may take")
    r.add_argument("--chat-template", action="store_true", help="local model: render chat with its chat tokens")
    r.add_argument("--device", default=None, help="local model: cpu, cuda, cuda:1, … (default: cuda when present)")
    r.add_argument("--out", default="runs/evals", help="directory for the records")
    s = sub.add_parser("show", help="print the samples of a record")
    s.add_argument("record", help="a record file written by `nanogpt4 eval run`")
    s.add_argument("--failed", action="store_true", help="only samples that are not correct (or errors)")
    s.add_argument("--sample", default=None, help="a sample id (regex)")
    s.add_argument("--limit", type=int, default=20, help="samples to print at most")
    li = sub.add_parser("list", help="list the evals of the registries")
    li.add_argument("--registry", action="append", default=[], help="extra registry root (overrides the wheel's)")
    li.add_argument("--no-wheel", action="store_true", help="only the --registry roots")
    li.add_argument("--grep", default="", help="only evals whose name contains this")


def make_registry(args):
    return R.default_registry(args.registry, wheel=not args.no_wheel)


def tag(model):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", model.rstrip("/"))[-60:]


def main(args):
    if args.cmd == "show":
        return show(args)
    reg = make_registry(args)
    if args.cmd == "list":
        for name in sorted(reg.evals):
            if args.grep in name and "id" in (reg.evals[name][0] or {}):
                print(name)
        return
    fns = [completion.make(args.model, args.api_key, args.chat_template, args.device)]
    if args.grader and args.grader != args.model:
        fns.append(completion.make(args.grader, args.api_key, args.chat_template, args.device))
    failed = False
    for name in reg.resolve(args.evals):
        spec = reg.get_eval(name)
        out = Path(args.out) / f"{spec.key}.{tag(args.model)}.jsonl"
        report = run_eval(spec, reg, fns, out, args.seed, args.max_samples, args.threads, args.sample_timeout)
        failed |= report["errors"] > 0
        print(f"{name} ({spec.key}): " + json.dumps(report), flush=True)
        print(f"  record: {out}")
    if failed:
        sys.exit(1)


def show(args):
    spec, events, final = recorder.read(args.record)
    print(f"eval {spec['eval']['key']}  models {spec['models']}  seed {spec['seed']}  samples {spec['samples']}")
    shown = 0
    for e in events:
        if args.sample and not re.search(args.sample, e["sample_id"]):
            continue
        d = e.get("data", {})
        if args.failed and e["type"] == "sample" and d.get("correct", d.get("score", 0) != 0) is not False:
            continue
        if shown == args.limit:
            print(f"… (--limit {args.limit})")
            break
        shown += 1
        if e["type"] == "error":
            print(f"\n[{e['sample_id']}] ERROR {e['error']}")
            continue
        prompt = d.get("prompt")
        prompt = chat.to_plain_text(prompt) if chat.is_chat(prompt) else prompt
        print(f"\n[{e['sample_id']}] seed {e['seed']}\n--- prompt\n{prompt}\n--- sampled\n{d.get('sampled')}")
        print("--- " + json.dumps({k: v for k, v in d.items() if k not in ("prompt", "sampled")}, default=str))
    print(f"\nfinal report: {json.dumps(final)}" if final else "\n(no final report: the run is unfinished)")
