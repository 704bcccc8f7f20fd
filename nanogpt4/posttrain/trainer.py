"""What every post-training trainer shares (sft.py, reward.py, dpo.py, ppo.py): the run directory and its config
check, the optimizer with the base run's muP groups, the learning-rate decay, autocast on CPU (bf16 where the CPU
has bf16 arithmetic), resuming from the newest verified checkpoint (metrics logged after it are dropped, to be
logged again), the batch order and the metrics log."""
import contextlib
import copy
import functools
import json
import random
import shutil
from pathlib import Path

import torch

from .. import checkpoint, runs
from ..common import UserError, atomic_write_json, command_line, git_commit, iter_jsonl, sha256_file
from ..perf import CPU_DTYPE, resume_hint


def setup(base, data_path, out, cfg, resume, kind="sft", model_update=None):
    """The run directory (config.json with `cfg` under `kind`, tokenizer.json) and the base run loaded (its model
    config updated with `model_update`, e.g. the image token of a vision run); refuses a run directory started
    from another base, data or settings. Shared by the post-training stages and the vision stage."""
    out, data_path = Path(out), Path(data_path)
    if not data_path.exists():
        raise UserError(f"{kind} data {data_path} does not exist (build it with `nanogpt4 "
                        f"{'vision-data' if kind == 'vision' else 'posttrain-data'}`)")
    b = runs.load(base, device="cpu")
    for k, v in (model_update or {}).items():
        setattr(b.model.cfg, k, v)
    inherited = {"train": b.config["train"]} if "train" in b.config else {}  # the base's muP multipliers etc.
    record = dict(model=b.model.cfg.to_dict(), **inherited, **{kind: cfg}, base=dict(run=str(Path(base).resolve()), checkpoint=b.checkpoint_id),
                  data=dict(path=str(data_path.resolve()), sha256=sha256_file(data_path)))
    if (out / "config.json").exists():
        old = json.loads((out / "config.json").read_text())
        if not resume:
            raise FileExistsError(f"{out} already holds a run: pass --resume to continue it, or use a new --out")
        if {k: old.get(k) for k in record} != record:
            raise UserError(f"{out} was started with another base, data or settings; use a new --out"
                            + resume_hint(old.get(kind, {}).get("dtype"), cfg.get("dtype")))
    else:
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(base) / "tokenizer.json", out / "tokenizer.json")
        atomic_write_json(out / "config.json", dict(record, git_commit=git_commit(), command=command_line()))
    return b


def optimizer(model, lr, config, heads=()):
    """AdamW over the GPT's muP groups with the base's multipliers (the embedding and readout need the larger steps;
    config: the run's config.json), plus scalar `heads` at the readout's rate."""
    tc = config.get("train", {})
    embed, readout = tc.get("embed_lr_mult", 1.0), tc.get("readout_lr_mult", 1.0)
    groups = [dict(params=list(h.parameters()), lr=lr * readout) for h in heads]
    opt = torch.optim.AdamW(groups + model.param_groups(lr, 0.0, embed, readout), betas=(0.9, 0.95), eps=1e-8)
    for g in opt.param_groups:
        g["initial_lr"] = g["lr"]
    return opt


def decay(opt, step, steps):
    """Linear decay to 10% of each group's initial rate: short runs, no warmup needed."""
    for g in opt.param_groups:
        g["lr"] = g["initial_lr"] * (1 - 0.9 * step / steps)


def update(opt, loss, params):
    """One optimizer step on `loss`: backward, clip the gradient norm of `params` at 1, step, clear."""
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def frozen(model):
    """A copy of `model` as it is now, in eval mode and without gradients: PPO's reference, the vision anchor."""
    return copy.deepcopy(model).eval().requires_grad_(False)


def autocast(dtype):
    return (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if dtype == "bfloat16" else contextlib.nullcontext


def save(out, step, config, parts, opt, root="ckpt"):
    """What `resume` reads: the others of `parts` into out/ckpt first, then the first of them and `opt` into out/root
    (so a crash between the two leaves the older pair to resume from); two of each kept."""
    meta = dict(step=step, config=config)
    for module in parts[1:]:
        checkpoint.save(Path(out) / "ckpt", module, None, meta)
    checkpoint.save(Path(out) / root, parts[0], opt, meta)
    for r in {"ckpt", root}:
        checkpoint.prune(Path(out) / r, keep=2)


def resume(out, resuming, parts, opt, root="ckpt"):
    """The step to start from: with `resuming`, the newest verified checkpoint in out/root is loaded into the
    first of `parts` (modules) and `opt`, and the others from out/ckpt at the same step; else 0 and a fresh log."""
    metrics = Path(out) / "metrics.jsonl"
    latest = checkpoint.latest_valid(Path(out) / root)[0] if resuming else None
    if latest is None:
        metrics.unlink(missing_ok=True)
        return 0
    step = checkpoint.load(latest, parts[0], opt)["step"]
    for module in parts[1:]:
        checkpoint.load(Path(out) / "ckpt" / latest.name, module)
    keep = [r for r in iter_jsonl(metrics, torn_tail=True) if r["step"] <= step] if metrics.exists() else []
    metrics.write_text("".join(json.dumps(r) + "\n" for r in keep))
    return step


def batch(data, step, size, seed, lengths=None):
    """The conversations of batch number `step`: epoch after epoch, each a permutation seeded by (seed, epoch);
    with `lengths` (a tuple, one per row) the permutation grouped by length (`grouped`)."""
    per_epoch = max(1, len(data) // size)
    epoch, i = divmod(step, per_epoch)
    key = seed * 1_000_003 + epoch
    order = permutation(len(data), key) if lengths is None else grouped(lengths, size, key)
    return [data[j] for j in order[i * size:(i + 1) * size]]


GROUP, BUCKET = 50, 64  # batches whose rows are grouped together by `grouped`; tokens of a length bucket


@functools.lru_cache(maxsize=4)
def grouped(lengths, size, seed):
    """A permutation cut into batches of rows of like length, so padding wastes little (HF's group_by_length, but
    coarse): each run of GROUP batches' rows of `permutation` is ordered by length bucket (BUCKET tokens wide;
    within a bucket the rows keep their shuffled order, so a batch still mixes tasks of similar length: a full
    sort makes nearly one-task batches, NOTES.md, vision v17) and cut into batches, and the
    whole batches are shuffled (the partial one stays last, unused as `batch` uses whole batches only)."""
    order = permutation(len(lengths), seed)
    run = size * GROUP
    cut = [sorted(order[s:s + run], key=lambda j: lengths[j] // BUCKET) for s in range(0, len(order), run)]
    batches = [r[k:k + size] for r in cut for k in range(0, len(r), size)]
    whole = [b for b in batches if len(b) == size]
    random.Random(seed).shuffle(whole)
    return tuple(j for b in whole + [b for b in batches if len(b) < size] for j in b)


@functools.lru_cache(maxsize=4)
def permutation(n, seed):
    """range(n) shuffled by Random(seed), made once per epoch (12 ms at 38,500 rows: 4% of a vision step)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return tuple(order)


def log(path, rec):
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


def add_args(p, steps, lr, unit):
    """The options the supervised trainers (sft, rm, dpo) share; `unit`: what a batch holds."""
    p.add_argument("--steps", type=int, default=steps, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=16, help=f"{unit} per step")
    p.add_argument("--lr", type=float, default=lr, help="peak learning rate of the hidden matrices, with the base's "
                                                        "muP groups")
    p.add_argument("--seed", type=int, default=0, help="seed of the batch order")
    p.add_argument("--eval-every", type=int, default=50, help="steps between held-out evaluations and checkpoints")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default=CPU_DTYPE,
                   help=f"autocast dtype on CPU (default: perf.fast_dtype, here {CPU_DTYPE})")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")


def check_args(args):
    if args.steps < 1 or args.batch_size < 1 or args.eval_every < 1 or not args.lr > 0:
        raise UserError("--steps, --batch-size and --eval-every must be ≥ 1 and --lr > 0")
