"""Direct preference optimisation (`nanogpt4 dpo`, Rafailov et al. 2023): the cheaper alternative to RLHF, on the
reward model's preference pairs. The policy starts from the SFT run and the frozen SFT model is the reference;
the loss is −log σ(β·[(log π(chosen) − log π_ref(chosen)) − (log π(rejected) − log π_ref(rejected))]) over the
answer's tokens (objectives.dpo_loss). The reference's log-probabilities are computed once, before training.
Logged: loss, the implicit reward margin and its accuracy on held-out pairs. Run-directory conventions and
`--resume` as in SFT; the result is a policy run that `nanogpt4 serve` and the evals load like any other.
"""
import json
import time
from pathlib import Path

import torch

from .. import chat
from ..common import UserError, atomic_write_json, iter_jsonl
from ..perf import CPU_DTYPE
from .objectives import dpo_loss, sequence_logprob, token_logprobs
from . import trainer
from .sft import padded


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
          dtype=CPU_DTYPE, resume=False, quiet=False):
    """DPO from the SFT run on the pairs at `pairs_path` into the run directory `out`; returns done.json."""
    cfg = dict(steps=steps, batch_size=batch_size, lr=lr, beta=beta, seed=seed, eval_every=eval_every, dtype=dtype)
    b = trainer.setup(sft_run, pairs_path, out, cfg, resume, kind="dpo")
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
    opt, cast = trainer.optimizer(model, lr, b.config), trainer.autocast(dtype)
    metrics = out / "metrics.jsonl"
    step = trainer.resume(out, resume, [model], opt)
    if step == 0:
        trainer.log(metrics, dict(step=0, heldout_accuracy=margin_accuracy(model, data["heldout"], ref["heldout"], pad)))
    t0 = time.perf_counter()
    while step < steps:
        trainer.decay(opt, step, steps)
        chunk = trainer.batch(data["train"], step, batch_size, seed)
        r = torch.tensor([ref["train"][index[id(e)]] for e in chunk])
        with cast():
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
            trainer.save(out, step, model.cfg.to_dict(), [model], opt)
            if not quiet:
                print(f"dpo step {step}/{steps}: loss {rec['loss']:.3f}, held-out accuracy "
                      f"{rec['heldout_accuracy']:.3f}", flush=True)
        trainer.log(metrics, rec)
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
    trainer.add_args(p, steps=200, lr=2e-4, unit="pairs")
    p.add_argument("--beta", type=float, default=0.1, help="DPO's β: how far the policy may move from the reference")


def main(args):
    trainer.check_args(args)
    if not args.beta > 0:
        raise UserError("--beta must be > 0")
    done = train(args.sft, args.pairs, args.out, args.steps, args.batch_size, args.lr, args.beta, args.seed,
                 args.eval_every, args.dtype, args.resume)
    print(json.dumps(done))
    return done
