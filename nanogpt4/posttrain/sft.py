"""Supervised fine-tuning (`nanogpt4 sft`): a base run trained on conversations in the chat format (chat.py), with
the loss on assistant tokens only (the mask `chat.render` gives: assistant content and its closing `<|end|>`).

The run directory follows pretraining's conventions: config.json (the model, the SFT settings, the base run and the
checkpoint it started from, the data file's sha256, commit and command line), tokenizer.json, ckpt/ (atomic,
sha256-verified), metrics.jsonl (train loss; held-out loss on the `heldout` split, never trained on) and done.json.
The batch order is a pure function of (seed, step), so `--resume` continues exactly where a killed run stopped.
Conversations that do not fit the context are dropped and counted, never silently cut.
"""
import contextlib
import json
import random
import shutil
import time
from pathlib import Path

import torch

from .. import chat, checkpoint, runs
from ..common import UserError, atomic_write_json, command_line, git_commit, iter_jsonl, sha256_file


def examples(tok, path, seq_len, split):
    """(ids, mask) of every conversation of `split` in the JSONL at `path` that fits `seq_len` + 1 tokens, and how
    many did not fit."""
    out, dropped = [], 0
    for row in iter_jsonl(path):
        if row.get("split", "train") != split:
            continue
        r = chat.render(tok, row["messages"], generate=False)
        if len(r.ids) > seq_len + 1:
            dropped += 1
        elif any(r.mask[1:]):
            out.append((r.ids, r.mask))
    return out, dropped


def padded(rows, pad):
    """Conversations right-padded into x, y, mask (B, longest − 1); padding is masked out."""
    T = max(len(ids) for ids, _ in rows)
    x = torch.full((len(rows), T), pad, dtype=torch.long)
    m = torch.zeros((len(rows), T), dtype=torch.long)
    for b, (ids, mask) in enumerate(rows):
        x[b, :len(ids)] = torch.tensor(ids)
        m[b, :len(mask)] = torch.tensor(mask)
    return x[:, :-1], x[:, 1:], m[:, 1:]


def batch(data, step, size, seed):
    """The conversations of batch number `step`: epoch after epoch, each a permutation seeded by (seed, epoch)."""
    per_epoch = max(1, len(data) // size)
    epoch, i = divmod(step, per_epoch)
    order = list(range(len(data)))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return [data[j] for j in order[i * size:(i + 1) * size]]


@torch.no_grad()
def heldout_loss(model, data, size, pad, autocast):
    """Mean loss per assistant token over every held-out conversation."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(data), size):
        x, y, m = padded(data[i:i + size], pad)
        with autocast():
            total += model(x, y, loss_mask=m, reduction="sum").item()
        count += int(m.sum())
    model.train()
    return total / max(count, 1)


def setup(base, data_path, out, cfg, resume, kind="sft"):
    """The run directory (config.json with `cfg` under `kind`, tokenizer.json) and the base run loaded; refuses a
    run directory started from another base, data or settings. Shared by the post-training stages."""
    out, data_path = Path(out), Path(data_path)
    if not data_path.exists():
        raise UserError(f"{kind} data {data_path} does not exist (build it with `nanogpt4 posttrain-data`)")
    b = runs.load(base, device="cpu")
    inherited = {"train": b.config["train"]} if "train" in b.config else {}  # the base's muP multipliers etc.
    record = dict(model=b.model.cfg.to_dict(), **inherited, **{kind: cfg}, base=dict(run=str(Path(base).resolve()), checkpoint=b.checkpoint_id),
                  data=dict(path=str(data_path.resolve()), sha256=sha256_file(data_path)))
    if (out / "config.json").exists():
        old = json.loads((out / "config.json").read_text())
        if not resume:
            raise FileExistsError(f"{out} already holds a run: pass --resume to continue it, or use a new --out")
        if {k: old.get(k) for k in record} != record:
            raise UserError(f"{out} was started with another base, data or settings; use a new --out")
    else:
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(base) / "tokenizer.json", out / "tokenizer.json")
        atomic_write_json(out / "config.json", dict(record, git_commit=git_commit(), command=command_line()))
    return b


def train(base, data_path, out, steps=300, batch_size=16, lr=6e-4, seed=0, eval_every=50, dtype="bfloat16",
          resume=False, quiet=False):
    """Fine-tune `base` on the conversations in `data_path` into the run directory `out`; returns done.json."""
    cfg = dict(steps=steps, batch_size=batch_size, lr=lr, seed=seed, eval_every=eval_every, dtype=dtype)
    b = setup(base, data_path, out, cfg, resume)
    out, model, tok = Path(out), b.model.train(), b.tok
    seq_len = model.cfg.seq_len
    train_set, dropped = examples(tok, data_path, seq_len, "train")
    held, held_dropped = examples(tok, data_path, seq_len, "heldout")
    if len(train_set) < batch_size:
        raise UserError(f"{data_path}: {len(train_set)} training conversations fit the context, fewer than a batch")
    tc = b.config.get("train", {})  # the base's muP multipliers: embedding and readout need the larger steps
    opt = torch.optim.AdamW(model.param_groups(lr, 0.0, tc.get("embed_lr_mult", 1.0), tc.get("readout_lr_mult", 1.0)),
                            betas=(0.9, 0.95), eps=1e-8)
    base_lrs = [g["lr"] for g in opt.param_groups]
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if dtype == "bfloat16" else contextlib.nullcontext
    pad, metrics = tok.eot_id, out / "metrics.jsonl"
    step = 0
    latest = checkpoint.latest_valid(out / "ckpt")[0] if resume else None
    if latest:
        step = checkpoint.load(latest, model, opt)["step"]
        if metrics.exists():  # the lines after the checkpoint are logged again
            keep = [r for r in iter_jsonl(metrics, torn_tail=True) if r["step"] <= step]
            metrics.write_text("".join(json.dumps(r) + "\n" for r in keep))
    else:
        metrics.unlink(missing_ok=True)
        log(metrics, dict(step=0, heldout_loss=heldout_loss(model, held, batch_size, pad, autocast)))
    t0 = time.perf_counter()
    while step < steps:
        for g, base_lr in zip(opt.param_groups, base_lrs):  # linear decay to 10%: short runs, no warmup needed
            g["lr"] = base_lr * (1 - 0.9 * step / steps)
        x, y, m = padded(batch(train_set, step, batch_size, seed), pad)
        with autocast():
            loss = model(x, y, loss_mask=m)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        rec = dict(step=step, loss=loss.item())
        if step % eval_every == 0 or step == steps:
            rec["heldout_loss"] = heldout_loss(model, held, batch_size, pad, autocast)
            checkpoint.save(out / "ckpt", model, opt, dict(step=step, config=model.cfg.to_dict()))
            checkpoint.prune(out / "ckpt", keep=2)
            if not quiet:
                print(f"sft step {step}/{steps}: loss {rec['loss']:.3f}, held-out {rec['heldout_loss']:.3f}", flush=True)
        log(metrics, rec)
    done = dict(step=step, train_conversations=len(train_set), heldout_conversations=len(held),
                dropped_too_long=dropped + held_dropped, seconds=round(time.perf_counter() - t0, 1),
                heldout_loss=[r for r in iter_jsonl(metrics) if "heldout_loss" in r][-1]["heldout_loss"],
                heldout_loss_base=next(iter_jsonl(metrics))["heldout_loss"])
    atomic_write_json(out / "done.json", done)
    return done


def log(path, rec):
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


# ----------------------------------------------------------------------------- CLI

def add_args(p):
    p.add_argument("--base", default="runs/default/pretrain", help="the pretrained run to fine-tune")
    p.add_argument("--data", default="runs/default/posttrain/data/sft.jsonl",
                   help="conversations (JSONL: messages, split train|heldout), e.g. from `nanogpt4 posttrain-data`")
    p.add_argument("--out", default="runs/default/sft", help="the SFT run directory")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=16, help="conversations per step")
    p.add_argument("--lr", type=float, default=6e-4, help="peak learning rate of the hidden matrices, with the base's "
                                                          "muP groups (a tenth of pretraining's 6e-3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the batch order")
    p.add_argument("--eval-every", type=int, default=50, help="steps between held-out evaluations and checkpoints")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="autocast dtype on CPU")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")


def main(args):
    if args.steps < 1 or args.batch_size < 1 or args.eval_every < 1 or not args.lr > 0:
        raise UserError("--steps, --batch-size and --eval-every must be ≥ 1 and --lr > 0")
    done = train(args.base, args.data, args.out, args.steps, args.batch_size, args.lr, args.seed, args.eval_every,
                 args.dtype, args.resume)
    print(json.dumps(done))
    return done
