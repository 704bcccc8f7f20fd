"""Supervised fine-tuning (`nanogpt4 sft`): a base run trained on conversations in the chat format (chat.py), with
the loss on assistant tokens only (the mask `chat.render` gives: assistant content and its closing `<|end|>`).

The run directory follows pretraining's conventions: config.json (the model, the SFT settings, the base run and the
checkpoint it started from, the data file's sha256, commit and command line), tokenizer.json, ckpt/ (atomic,
sha256-verified), metrics.jsonl (train loss; held-out loss on the `heldout` split, never trained on) and done.json.
The batch order is a pure function of (seed, step), so `--resume` continues exactly where a killed run stopped.
Conversations that do not fit the context are dropped and counted, never silently cut.
"""
import hashlib
import json
import time
from pathlib import Path

import torch

from .. import chat
from ..common import UserError, atomic_write_json, iter_jsonl
from ..perf import CPU_DTYPE
from . import trainer


def kept(row, safety_share):
    """Whether a training conversation is used: all of them, except that only a `safety_share` of the refusals of
    disallowed requests (chosen by a hash of the row's id, so the same ones every run) are."""
    if row.get("category") != "disallowed" or safety_share >= 1:
        return True
    return int(hashlib.sha256(str(row["id"]).encode()).hexdigest()[:8], 16) / 16 ** 8 < safety_share


def examples(tok, path, seq_len, split, safety_share=1.0):
    """(ids, mask) of every conversation of `split` in the JSONL at `path` that fits `seq_len` + 1 tokens (of the
    training split, those `kept`), and how many did not fit."""
    out, dropped = [], 0
    for row in iter_jsonl(path):
        if row.get("split", "train") != split or (split == "train" and not kept(row, safety_share)):
            continue
        r = chat.render(tok, row["messages"], generate=False)
        if r.images:
            raise UserError(f"{path}: conversation {row.get('id', '?')} has images; a text model cannot see them "
                            "(train image conversations with `nanogpt4 vision --data`)")
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


def train(base, data_path, out, steps=300, batch_size=16, lr=6e-4, seed=0, eval_every=50, dtype=CPU_DTYPE,
          resume=False, quiet=False, safety_share=1.0):
    """Fine-tune `base` on the conversations in `data_path` into the run directory `out`; returns done.json."""
    cfg = dict(steps=steps, batch_size=batch_size, lr=lr, seed=seed, eval_every=eval_every, dtype=dtype,
               safety_share=safety_share)
    b = trainer.setup(base, data_path, out, cfg, resume)
    out, model, tok = Path(out), b.model.train(), b.tok
    seq_len = model.cfg.seq_len
    train_set, dropped = examples(tok, data_path, seq_len, "train", safety_share)
    held, held_dropped = examples(tok, data_path, seq_len, "heldout")
    if len(train_set) < batch_size:
        raise UserError(f"{data_path}: {len(train_set)} training conversations fit the context, fewer than a batch")
    opt, cast = trainer.optimizer(model, lr, b.config), trainer.autocast(dtype)
    pad, metrics = tok.eot_id, out / "metrics.jsonl"
    step = trainer.resume(out, resume, [model], opt)
    if step == 0:
        trainer.log(metrics, dict(step=0, heldout_loss=heldout_loss(model, held, batch_size, pad, cast)))
    t0 = time.perf_counter()
    while step < steps:
        trainer.decay(opt, step, steps)
        x, y, m = padded(trainer.batch(train_set, step, batch_size, seed), pad)
        with cast():
            loss = model(x, y, loss_mask=m)
        trainer.update(opt, loss, model.parameters())
        step += 1
        rec = dict(step=step, loss=loss.item())
        if step % eval_every == 0 or step == steps:
            rec["heldout_loss"] = heldout_loss(model, held, batch_size, pad, cast)
            trainer.save(out, step, model.cfg.to_dict(), [model], opt)
            if not quiet:
                print(f"sft step {step}/{steps}: loss {rec['loss']:.3f}, held-out {rec['heldout_loss']:.3f}", flush=True)
        trainer.log(metrics, rec)
    done = dict(step=step, train_conversations=len(train_set), safety_share=safety_share, heldout_conversations=len(held),
                dropped_too_long=dropped + held_dropped, seconds=round(time.perf_counter() - t0, 1),
                heldout_loss=[r for r in iter_jsonl(metrics) if "heldout_loss" in r][-1]["heldout_loss"],
                heldout_loss_base=next(iter_jsonl(metrics))["heldout_loss"])
    atomic_write_json(out / "done.json", done)
    return done


# ----------------------------------------------------------------------------- CLI

def add_args(p):
    p.add_argument("--base", default="runs/default/pretrain", help="the pretrained run to fine-tune")
    p.add_argument("--data", default="runs/default/posttrain/data/sft.jsonl",
                   help="conversations (JSONL: messages, split train|heldout), e.g. from `nanogpt4 posttrain-data`")
    p.add_argument("--out", default="runs/default/sft", help="the SFT run directory")
    trainer.add_args(p, steps=300, lr=6e-4, unit="conversations")  # lr: a tenth of pretraining's
    p.add_argument("--safety-share", type=float, default=0.1,
                   help="share of the refusal demonstrations (disallowed requests) trained on, 0-1: the report's "
                        "recipe leaves most safety behaviour to RLHF with the RBRM reward")


def main(args):
    trainer.check_args(args)
    if not 0 <= args.safety_share <= 1:
        raise UserError("--safety-share must be between 0 and 1")
    done = train(args.base, args.data, args.out, args.steps, args.batch_size, args.lr, args.seed, args.eval_every,
                 args.dtype, args.resume, safety_share=args.safety_share)
    print(json.dumps(done))
    return done
