"""Direct preference optimisation (`nanogpt4 dpo`, Rafailov et al. 2023): the cheaper alternative to RLHF, on the
reward model's preference pairs. The policy starts from the SFT run and the frozen SFT model is the reference;
the loss is −log σ(β·[(log π(chosen) − log π_ref(chosen)) − (log π(rejected) − log π_ref(rejected))]) over the
answer's tokens (objectives.dpo_loss). The reference's log-probabilities are computed once, before training.
Logged: loss, the implicit reward margin and its accuracy on held-out pairs. Run-directory conventions and
`--resume` as in SFT; the result is a policy run that `nanogpt4 serve` and the evals load like any other.
"""
import contextlib
import json
import time
from pathlib import Path

import torch

from .. import chat, checkpoint
from ..common import UserError, atomic_write_json, iter_jsonl
from .objectives import dpo_loss, sequence_logprob, token_logprobs
from .sft import batch, log, padded, setup


def encode(tok, pair, seq_len):
    """((ids, mask) chosen, (ids, mask) rejected) with the mask on the answer's tokens, or None if either is too long."""
    out = []
    for answer in (pair["chosen"], pair["rejected"]):
        r = chat.render(tok, pair["messages"] + [{"role": "assistant", "content": answer}], generate=False)
        if len(r.ids) > seq_len + 1:
            return None
        out.append((r.ids, r.mask))
    return tuple(out)


def logprobs(model, rows, pad):
    """Sequence log-probabilities of the masked (answer) tokens of each (ids, mask) row."""
    x, y, m = padded(rows, pad)
    return sequence_logprob(token_logprobs(model(x), y), m)


@torch.no_grad()
def reference(model, pairs, pad, size=32):
    """The frozen model's (chosen, rejected) log-probabilities of every pair."""
    out = []
    for i in range(0, len(pairs), size):
        chunk = pairs[i:i + size]
        lp = logprobs(model, [c for c, _ in chunk] + [r for _, r in chunk], pad)
        out += list(zip(lp[:len(chunk)].tolist(), lp[len(chunk):].tolist()))
    return out


@torch.no_grad()
def margin_accuracy(model, pairs, ref, pad, size=32):
    """Fraction of pairs whose implicit reward prefers the chosen answer (a tie counts half: at the reference every
    margin is 0, which is chance, not 0)."""
    model.eval()
    right = 0
    for i in range(0, len(pairs), size):
        chunk, r = pairs[i:i + size], torch.tensor(ref[i:i + size])
        lp = logprobs(model, [c for c, _ in chunk] + [x for _, x in chunk], pad)
        margin = (lp[:len(chunk)] - r[:, 0]) - (lp[len(chunk):] - r[:, 1])
        right += float((margin > 0).sum() + 0.5 * (margin == 0).sum())
    model.train()
    return right / max(len(pairs), 1)


def train(sft_run, pairs_path, out, steps=200, batch_size=16, lr=2e-4, beta=0.1, seed=0, eval_every=50,
          dtype="bfloat16", resume=False, quiet=False):
    """DPO from the SFT run on the pairs at `pairs_path` into the run directory `out`; returns done.json."""
    cfg = dict(steps=steps, batch_size=batch_size, lr=lr, beta=beta, seed=seed, eval_every=eval_every, dtype=dtype)
    b = setup(sft_run, pairs_path, out, cfg, resume, kind="dpo")
    out, tok, pad = Path(out), b.tok, b.tok.eot_id
    model = b.model.train()
    data = {s: [e for p in iter_jsonl(pairs_path) if p.get("split", "train") == s
                if (e := encode(tok, p, model.cfg.seq_len))] for s in ("train", "heldout")}
    if len(data["train"]) < batch_size:
        raise UserError(f"{pairs_path}: {len(data['train'])} training pairs fit the context, fewer than a batch")
    model.eval()
    ref = {s: reference(model, d, pad) for s, d in data.items()}  # before any step: the SFT model's own
    model.train()
    index = {id(e): i for i, e in enumerate(data["train"])}
    tc = b.config.get("train", {})
    opt = torch.optim.AdamW(model.param_groups(lr, 0.0, tc.get("embed_lr_mult", 1.0), tc.get("readout_lr_mult", 1.0)),
                            betas=(0.9, 0.95), eps=1e-8)
    base_lrs = [g["lr"] for g in opt.param_groups]
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if dtype == "bfloat16" else contextlib.nullcontext
    metrics, step = out / "metrics.jsonl", 0
    latest = checkpoint.latest_valid(out / "ckpt")[0] if resume else None
    if latest:
        step = checkpoint.load(latest, model, opt)["step"]
        keep = [r for r in iter_jsonl(metrics, torn_tail=True) if r["step"] <= step] if metrics.exists() else []
        metrics.write_text("".join(json.dumps(r) + "\n" for r in keep))
    else:
        metrics.unlink(missing_ok=True)
        log(metrics, dict(step=0, heldout_accuracy=margin_accuracy(model, data["heldout"], ref["heldout"], pad)))
    t0 = time.perf_counter()
    while step < steps:
        for g, base_lr in zip(opt.param_groups, base_lrs):
            g["lr"] = base_lr * (1 - 0.9 * step / steps)
        chunk = batch(data["train"], step, batch_size, seed)
        r = torch.tensor([ref["train"][index[id(e)]] for e in chunk])
        with autocast():
            lp = logprobs(model, [c for c, _ in chunk] + [x for _, x in chunk], pad).float()
        loss, chosen, rejected = dpo_loss(lp[:len(chunk)], lp[len(chunk):], r[:, 0], r[:, 1], beta)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        rec = dict(step=step, loss=loss.item(), margin=(chosen - rejected).mean().item())
        if step % eval_every == 0 or step == steps:
            rec["heldout_accuracy"] = margin_accuracy(model, data["heldout"], ref["heldout"], pad)
            checkpoint.save(out / "ckpt", model, opt, dict(step=step, config=model.cfg.to_dict()))
            checkpoint.prune(out / "ckpt", keep=2)
            if not quiet:
                print(f"dpo step {step}/{steps}: loss {rec['loss']:.3f}, held-out accuracy "
                      f"{rec['heldout_accuracy']:.3f}", flush=True)
        log(metrics, rec)
    rows = list(iter_jsonl(metrics))
    done = dict(step=step, train_pairs=len(data["train"]), heldout_pairs=len(data["heldout"]),
                heldout_accuracy=[r for r in rows if "heldout_accuracy" in r][-1]["heldout_accuracy"],
                heldout_accuracy_sft=rows[0]["heldout_accuracy"], seconds=round(time.perf_counter() - t0, 1))
    atomic_write_json(out / "done.json", done)
    return done


# ----------------------------------------------------------------------------- CLI

def add_args(p):
    p.add_argument("--sft", default="runs/default/sft", help="the SFT run: the starting policy and the reference")
    p.add_argument("--pairs", default="runs/default/posttrain/data/pairs.jsonl",
                   help="preference pairs (JSONL: messages, chosen, rejected, split)")
    p.add_argument("--out", default="runs/default/dpo", help="the DPO run directory")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=16, help="pairs per step")
    p.add_argument("--lr", type=float, default=2e-4, help="peak learning rate of the hidden matrices")
    p.add_argument("--beta", type=float, default=0.1, help="DPO's β: how far the policy may move from the reference")
    p.add_argument("--seed", type=int, default=0, help="seed of the pair order")
    p.add_argument("--eval-every", type=int, default=50, help="steps between held-out evaluations and checkpoints")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="autocast dtype on CPU")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")


def main(args):
    if args.steps < 1 or args.batch_size < 1 or args.eval_every < 1 or not args.lr > 0 or not args.beta > 0:
        raise UserError("--steps, --batch-size and --eval-every must be ≥ 1; --lr and --beta > 0")
    done = train(args.sft, args.pairs, args.out, args.steps, args.batch_size, args.lr, args.beta, args.seed,
                 args.eval_every, args.dtype, args.resume)
    print(json.dumps(done))
    return done
