"""One entry point: `nanogpt4 <stage> …`. Each stage lives in its own module with add_args(parser) and main(args)."""
import argparse
import importlib
import os
import shlex
import sys
import time

from .common import UserError

STAGES = {  # name: (module, help)
    "data": ("nanogpt4.data.corpus", "fetch, clean, dedup and split the corpus"),
    "tokenizer": ("nanogpt4.tokenizer", "train the BPE tokenizer and tokenise the corpus"),
    "pretrain": ("nanogpt4.train.pretrain", "pretrain a GPT (one process or torchrun)"),
    "long-context": ("nanogpt4.train.long_context", "the long-context variant of the base model (4× its context)"),
    "sample": ("nanogpt4.sample", "generate text from a checkpoint"),
    "scaling": ("nanogpt4.scaling.stage", "ladder, registered predictions and their verification"),
    "eval": ("nanogpt4.evals.run", "run registry evals (openai/evals format) on a model; show records"),
    "report": ("nanogpt4.evals.card", "the eval report card of a run: benchmarks, calibration, contamination"),
    "posttrain-data": ("nanogpt4.posttrain.data", "build the post-training datasets (SFT, prompts, human-labelled pairs, refusal labels)"),
    "vision-data": ("nanogpt4.data.images", "build the vision sets: generated visual questions, photos, Fashion-MNIST, MNIST, digits, an evals registry"),
    "sft": ("nanogpt4.posttrain.sft", "supervised fine-tuning on conversations (loss on assistant tokens)"),
    "rm": ("nanogpt4.posttrain.reward", "the reward model: Bradley-Terry on preference pairs, from the SFT run"),
    "rbrm": ("nanogpt4.posttrain.rbrm", "rule-based reward models: train and evaluate the grader, fit the weights"),
    "rlhf": ("nanogpt4.posttrain.ppo", "RLHF: PPO against the reward model with a KL penalty to the SFT policy"),
    "behaviour": ("nanogpt4.posttrain.behaviour", "held-out refusals, jailbreaks, steerability, toxicity per model"),
    "dpo": ("nanogpt4.posttrain.dpo", "direct preference optimisation of the SFT policy on the preference pairs"),
    "vision": ("nanogpt4.train.vision", "the vision stage: ViT encoder + projector on the chat model, align then joint"),
    "keys": ("nanogpt4.serve.keys", "API keys of the server: create (shown once), list, revoke"),
    "usage": ("nanogpt4.serve.usage", "the server's metered usage per key, model and day, with cost"),
    "moderation": ("nanogpt4.serve.moderation", "the moderation classifier: train (with held-out metrics), check TEXT"),
    "serve": ("nanogpt4.serve.api", "the OpenAI-compatible API over the engine, the chat page, /metrics"),
    "run": ("nanogpt4.pipeline", "the main job: every stage in order, then the report"),
}

USER_ERRORS = (UserError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError)

TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"


def run_stage(name, argv):
    """Run one stage exactly as `nanogpt4 <name> <argv>` would; returns (result, seconds)."""
    module = importlib.import_module(STAGES[name][0])
    p = argparse.ArgumentParser(prog=f"nanogpt4 {name}")
    module.add_args(p)
    print(f"\n$ nanogpt4 {name} {shlex.join(argv)}", flush=True)
    t = time.perf_counter()
    result = module.main(p.parse_args(argv))
    return result, time.perf_counter() - t


def use_tcmalloc(cmd=None):
    """Re-exec under tcmalloc when it is installed: glibc malloc re-faults big tensors every step, which costs
    1.2-3.3x in training throughput on the project's CPU (shared/PERF-NOTES.md). NANOGPT4_NO_TCMALLOC=1 opts out."""
    if os.environ.get("NANOGPT4_NO_TCMALLOC") or "tcmalloc" in os.environ.get("LD_PRELOAD", "") or not os.path.exists(TCMALLOC):
        return
    env = dict(os.environ, LD_PRELOAD=(TCMALLOC + " " + os.environ.get("LD_PRELOAD", "")).strip())
    cmd = cmd or [sys.executable, "-m", "nanogpt4.cli"] + sys.argv[1:]
    os.execve(cmd[0], cmd, env)


def main(argv=None):
    """The command line (argv None): a user error is one line on stderr and exit status 1. Called from Python with
    argv, every error is raised to the caller."""
    command_line = argv is None
    if command_line:
        use_tcmalloc()
    parser = argparse.ArgumentParser(prog="nanogpt4", description=__doc__)
    sub = parser.add_subparsers(dest="stage", required=True)
    argv = sys.argv[1:] if argv is None else argv
    for name, (module, help_) in STAGES.items():
        p = sub.add_parser(name, help=help_)
        p.set_defaults(module=module)
        if argv and argv[0] == name:  # import only the stage that runs: fast start, independent stages
            importlib.import_module(module).add_args(p)
    args = parser.parse_args(argv)
    try:
        importlib.import_module(args.module).main(args)
    except USER_ERRORS as e:  # the user can fix these: one line, no traceback (a bug still shows its traceback)
        if not command_line:
            raise
        msg = ' '.join(str(e).split())
        if getattr(e, "resumable", False):  # a stopped training: how to go on from this very command line
            plain_pretrain = args.stage == "pretrain" and not getattr(args, "resume", True)
            msg += "; continue with --resume" if plain_pretrain else "; run the same command again to continue"
        print(f"nanogpt4: error: {msg}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
