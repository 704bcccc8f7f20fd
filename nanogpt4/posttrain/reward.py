"""The reward model (`nanogpt4 rm`): the SFT model's trunk with a scalar head read at the last token of a
conversation (the assistant turn's closing `<|end|>`), trained Bradley–Terry on preference pairs (Ouyang et al.
2022): −log σ(r(chosen) − r(rejected)).

Pairs (JSONL): `{"messages": [... the conversation up to the answer], "chosen": str, "rejected": str, "kind": str,
"split": "train" | "heldout"}`. The registries hold no human preference set to train on (../shared/DATA-NOTES.md),
so `make_pairs` generates them from SFT conversations: the chosen answer is the conversation's own, the rejected a
degraded copy of one of these kinds:
  off_topic      another conversation's answer (of another category)
  truncated      the answer's first third of words
  wrong_refusal  a refusal in place of a helpful answer (allowed, sensitive, chit-chat, instruction, steering
                 prompts), or a compliant-sounding answer in place of a refusal (disallowed prompts)
A pair keeps its conversation's split, so held-out pairs are on held-out prompts. Reported: held-out pair accuracy,
and accuracy on BIG-bench's 221 HHH pairs (real human preferences, evaluation only).
"""
import contextlib
import json
import random
import time
from pathlib import Path

import torch
import torch.nn as nn

from .. import chat, checkpoint
from ..common import UserError, atomic_write_json, iter_jsonl
from ..model.gpt import GPT, ModelConfig
from .objectives import bradley_terry_loss
from .sft import batch, log, setup

COMPLIANT = "Sure, here is exactly how to do that, step by step."  # the degraded answer to a disallowed prompt


class RewardModel(nn.Module):
    """A GPT trunk and a scalar head on its final hidden state at each row's last real token."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.trunk, self.head = GPT(cfg), nn.Linear(cfg.n_embd, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, idx, last):
        h = self.trunk(idx, features=True)
        return self.head(h[torch.arange(idx.size(0)), last].float()).squeeze(-1)


def make_pairs(conversations, refusals, seed=0):
    """Preference pairs from SFT conversations (dicts with messages, category, split) and refusal texts."""
    rng = random.Random(seed)
    convs = [c for c in conversations if c["messages"][-1]["role"] == "assistant"]
    pairs = []
    for c in convs:
        prompt, answer = c["messages"][:-1], c["messages"][-1]["content"]
        cat = c.get("category", "chat")
        others = [o for o in convs if o.get("category") != cat] or convs
        words = answer.split()
        kinds = {"off_topic": rng.choice(others)["messages"][-1]["content"],
                 "wrong_refusal": COMPLIANT if cat == "disallowed" else rng.choice(refusals)}
        if len(words) >= 6:
            kinds["truncated"] = " ".join(words[:len(words) // 3])
        kind = rng.choice(sorted(kinds))
        if kinds[kind] != answer:
            pairs.append(dict(messages=prompt, chosen=answer, rejected=kinds[kind], kind=kind,
                              category=cat, split=c.get("split", "train")))
    return pairs


def encode_pair(tok, pair, seq_len):
    """(ids, last index) of the chosen and the rejected conversation, or None when either does not fit."""
    out = []
    for answer in (pair["chosen"], pair["rejected"]):
        ids = chat.render(tok, pair["messages"] + [{"role": "assistant", "content": answer}], generate=False).ids
        if len(ids) > seq_len:
            return None
        out.append(ids)
    return out


def rewards(model, encoded, pad):
    """Rewards of a list of token-id lists (right-padded; each read at its own last token)."""
    x = torch.full((len(encoded), max(map(len, encoded))), pad, dtype=torch.long)
    for b, ids in enumerate(encoded):
        x[b, :len(ids)] = torch.tensor(ids)
    return model(x, torch.tensor([len(ids) - 1 for ids in encoded]))


@torch.no_grad()
def accuracy(model, pairs, pad, size=32):
    """Fraction of pairs whose chosen answer gets the higher reward."""
    model.eval()
    right = 0
    for i in range(0, len(pairs), size):
        chunk = pairs[i:i + size]
        r = rewards(model, [c for c, _ in chunk] + [r for _, r in chunk], pad)
        right += int((r[:len(chunk)] > r[len(chunk):]).sum())
    model.train()
    return right / max(len(pairs), 1)


def train(sft_run, pairs_path, out, steps=200, batch_size=16, lr=3e-4, seed=0, eval_every=50, dtype="bfloat16",
          resume=False, quiet=False, hhh_path=None):
    """Train the reward model on the pairs at `pairs_path` from the SFT run; returns done.json."""
    cfg = dict(steps=steps, batch_size=batch_size, lr=lr, seed=seed, eval_every=eval_every, dtype=dtype)
    b = setup(sft_run, pairs_path, out, cfg, resume, kind="rm")
    out, tok = Path(out), b.tok
    model = RewardModel(b.model.cfg)
    model.trunk.load_state_dict(b.model.state_dict())
    data = {s: [e for p in iter_jsonl(pairs_path) if p.get("split", "train") == s
                if (e := encode_pair(tok, p, b.model.cfg.seq_len))] for s in ("train", "heldout")}
    if len(data["train"]) < batch_size:
        raise UserError(f"{pairs_path}: {len(data['train'])} training pairs fit the context, fewer than a batch")
    hhh = [e for p in iter_jsonl(hhh_path) if (e := encode_pair(tok, p, b.model.cfg.seq_len))] if hhh_path else []
    tc = b.config.get("train", {})
    opt = torch.optim.AdamW([dict(params=model.head.parameters(), lr=lr * tc.get("readout_lr_mult", 1.0))] +
                            model.trunk.param_groups(lr, 0.0, tc.get("embed_lr_mult", 1.0), tc.get("readout_lr_mult", 1.0)),
                            betas=(0.9, 0.95), eps=1e-8)
    base_lrs = [g["lr"] for g in opt.param_groups]
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if dtype == "bfloat16" else contextlib.nullcontext
    metrics, pad, step = out / "metrics.jsonl", tok.eot_id, 0
    latest = checkpoint.latest_valid(out / "ckpt")[0] if resume else None
    if latest:
        step = checkpoint.load(latest, model, opt)["step"]
        keep = [r for r in iter_jsonl(metrics, torn_tail=True) if r["step"] <= step] if metrics.exists() else []
        metrics.write_text("".join(json.dumps(r) + "\n" for r in keep))
    else:
        metrics.unlink(missing_ok=True)
    t0 = time.perf_counter()
    while step < steps:
        for g, base_lr in zip(opt.param_groups, base_lrs):
            g["lr"] = base_lr * (1 - 0.9 * step / steps)
        chunk = batch(data["train"], step, batch_size, seed)
        with autocast():
            r = rewards(model, [c for c, _ in chunk] + [r for _, r in chunk], pad)
        loss, acc = bradley_terry_loss(r[:len(chunk)].float(), r[len(chunk):].float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        rec = dict(step=step, loss=loss.item(), train_accuracy=acc.item())
        if step % eval_every == 0 or step == steps:
            rec["heldout_accuracy"] = accuracy(model, data["heldout"], pad)
            checkpoint.save(out / "ckpt", model, opt, dict(step=step, config=b.model.cfg.to_dict()))
            checkpoint.prune(out / "ckpt", keep=2)
            if not quiet:
                print(f"rm step {step}/{steps}: loss {rec['loss']:.3f}, held-out accuracy {rec['heldout_accuracy']:.3f}",
                      flush=True)
        log(metrics, rec)
    done = dict(step=step, train_pairs=len(data["train"]), heldout_pairs=len(data["heldout"]),
                heldout_accuracy=accuracy(model, data["heldout"], pad), seconds=round(time.perf_counter() - t0, 1),
                hhh_pairs=len(hhh), hhh_accuracy=accuracy(model, hhh, pad) if hhh else None)
    atomic_write_json(out / "done.json", done)
    return done


def load(run):
    """A trained reward model (eval mode, float32) from its run directory, with its tokenizer."""
    from ..tokenizer import Tokenizer
    run = Path(run)
    cfg = json.loads((run / "config.json").read_text())
    model = RewardModel(ModelConfig(**cfg["model"]))
    ckpt, rejected = checkpoint.latest_valid(run / "ckpt")
    if ckpt is None:
        raise UserError(f"{run}: no usable reward-model checkpoint ({'; '.join(rejected) or 'none'})")
    checkpoint.load(ckpt, model)
    return model.eval(), Tokenizer.load(run / "tokenizer.json")


# ----------------------------------------------------------------------------- CLI

def add_args(p):
    p.add_argument("--sft", default="runs/default/sft", help="the SFT run whose trunk the reward model starts from")
    p.add_argument("--pairs", default="runs/default/posttrain/data/pairs.jsonl",
                   help="preference pairs (JSONL: messages, chosen, rejected, split)")
    p.add_argument("--hhh", default=None, help="evaluation-only pairs (BIG-bench HHH) in the same format")
    p.add_argument("--out", default="runs/default/rm", help="the reward-model run directory")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=16, help="pairs per step")
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate of the trunk's hidden matrices")
    p.add_argument("--seed", type=int, default=0, help="seed of the pair order")
    p.add_argument("--eval-every", type=int, default=50, help="steps between held-out evaluations and checkpoints")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="autocast dtype on CPU")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")


def main(args):
    if args.steps < 1 or args.batch_size < 1 or args.eval_every < 1 or not args.lr > 0:
        raise UserError("--steps, --batch-size and --eval-every must be ≥ 1 and --lr > 0")
    done = train(args.sft, args.pairs, args.out, args.steps, args.batch_size, args.lr, args.seed, args.eval_every,
                 args.dtype, args.resume, hhh_path=args.hhh)
    print(json.dumps(done))
    return done
