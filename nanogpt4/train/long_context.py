"""`nanogpt4 long-context`: the 8K → 32K analogue. GPT-4 shipped an 8,192-token model and a 32,768-token variant;
this makes a variant of the base model with `factor`× its context.

The recipe is Code Llama's (Rozière et al. 2023) at our scale: raise the RoPE base frequency so that positions past
the trained context rotate the slow dimensions no further than the trained positions did ("NTK-aware" scaling:
θ' = θ·factor^(d/(d-2)), d the head size), then pretrain a little more on windows of the new length cut from
documents at least that long (every window is one document: a window spanning several would teach nothing about
long-range use). The variant is measured by held-out loss by position on long held-out documents (sympy code,
never trained on, and validation prose): it must keep falling past the original context. The base model, given
the longer context without training, is measured beside it.
"""
import json
import time
from pathlib import Path

import numpy as np
import torch

from ..common import UserError, atomic_write_json
from ..perf import CPU_DTYPE
from ..data import shards
from ..model.gpt import ModelConfig
from ..runs import read_config
from ..posttrain import trainer
from .pretrain import loss_by_position

SPLITS = ("heldout_code", "val_text")


def rope_theta(theta, factor, head_dim):
    """NTK-aware RoPE base for a context `factor`× longer (bloc97 2023; Code Llama raises it further)."""
    return theta * factor ** (head_dim / (head_dim - 2))


def long_documents(data, eot, length):
    """(start, n) per document of `data` (every document follows an <|endoftext|>) that holds at least one window
    of length + 1 tokens: a window may start at start .. start + n - 1."""
    ends = np.flatnonzero(data == eot)
    starts, stops = ends + 1, np.append(ends[1:], len(data))
    n = stops - starts - length  # windows of length + 1 tokens that fit
    keep = n > 0
    return np.stack([starts[keep], n[keep]], 1).astype(np.int64)


def windows(data, docs, length, count, rng=None):
    """`count` windows (x, y) of `length` tokens inside long documents: random ones weighted by how many each
    document holds (rng), or, without rng, fixed ones evenly spaced over all of them (evaluation)."""
    total = docs[:, 1].cumsum()
    picks = rng.integers(0, total[-1], count) if rng is not None else np.linspace(0, total[-1] - 1, count).astype(np.int64)
    doc = np.searchsorted(total, picks, side="right")
    offset = picks - (total[doc] - docs[doc, 1])
    buf = np.stack([data[s:s + length + 1] for s in docs[doc, 0] + offset]).astype(np.int64)
    t = torch.from_numpy(buf)
    return t[:, :-1], t[:, 1:]


def profile(model, data, docs, length, count):
    """Mean held-out loss at each position of `count` fixed long-document windows, as a list."""
    return loss_by_position(model, *windows(data, docs, length, count), micro_batch=8).tolist()


def buckets(per_pos, context):
    """Mean loss over position ranges in units of the original context: the last quarter below it, 1-2×, and from
    2× to the end (for the 4× variant the issue's bar: 2-4× must be below the last quarter below 1×)."""
    p = np.asarray(per_pos)
    edges = dict(below=(3 * context // 4, context), x1_2=(context, 2 * context), far=(2 * context, len(p)))
    return {k: float(p[a:b].mean()) for k, (a, b) in edges.items()}


def train(base, tokens_dir, out, factor=4, steps=150, batch_size=8, lr=1e-3, seed=0, eval_every=50, eval_windows=64,
          dtype=CPU_DTYPE, resume=False, quiet=False):
    """Continue pretraining `base` at factor× its context into `out`; returns done.json."""
    tokens_dir = Path(tokens_dir)
    meta = json.loads((tokens_dir / "meta.json").read_text())
    base_cfg = ModelConfig(**read_config(base)["model"])
    context = base_cfg.seq_len
    length, theta = factor * context, rope_theta(base_cfg.rope_theta, factor, base_cfg.head_dim)
    train_data = shards.load(tokens_dir, "train")
    train_docs = long_documents(train_data, meta["eot_id"], length)
    held = {s: shards.load(tokens_dir, s) for s in SPLITS}
    held_docs = {s: long_documents(a, meta["eot_id"], length) for s, a in held.items()}
    for s, docs in [("train", train_docs), *held_docs.items()]:
        if not len(docs):
            raise UserError(f"{tokens_dir}: split {s} has no document of {length + 1} tokens or more")
    cfg = dict(factor=factor, steps=steps, batch_size=batch_size, lr=lr, seed=seed, eval_every=eval_every,
               eval_windows=eval_windows, dtype=dtype)
    b = trainer.setup(base, tokens_dir / "meta.json", out, cfg, resume, kind="long_context",
                      model_update=dict(seq_len=length, rope_theta=theta))
    out, model = Path(out), b.model
    model.set_rope()

    def measure():
        model.eval()
        res = {s: profile(model, held[s], held_docs[s], length, eval_windows) for s in SPLITS}
        model.train()
        return res

    opt, cast = trainer.optimizer(model, lr, b.config), trainer.autocast(dtype)
    metrics = out / "metrics.jsonl"
    step = trainer.resume(out, resume, [model], opt)
    if step == 0:  # the base model at the longer context with the new RoPE base, untrained: the starting point
        start = measure()
        atomic_write_json(out / "untrained.json", start)
        trainer.log(metrics, dict(step=0, **{s: buckets(p, context) for s, p in start.items()}))
    t0 = time.perf_counter()
    model.train()
    while step < steps:
        trainer.decay(opt, step, steps)
        x, y = windows(train_data, train_docs, length, batch_size, np.random.default_rng([seed, step]))
        with cast():
            loss = model(x, y)
        trainer.update(opt, loss, model.parameters())
        step += 1
        rec = dict(step=step, loss=loss.item())
        if step % eval_every == 0 or step == steps:
            trainer.save(out, step, model.cfg.to_dict(), [model], opt)
            if not quiet:
                print(f"long-context step {step}/{steps}: loss {rec['loss']:.3f}", flush=True)
        trainer.log(metrics, rec)
    final = measure()
    done = dict(step=step, context=context, seq_len=length, rope_theta=theta, train_documents=int(len(train_docs)),
                tokens=steps * batch_size * length, seconds=round(time.perf_counter() - t0, 1),
                by_position=final, buckets={s: buckets(p, context) for s, p in final.items()},
                untrained=json.loads((out / "untrained.json").read_text()))
    done["untrained_buckets"] = {s: buckets(p, context) for s, p in done["untrained"].items()}
    done["keeps_falling"] = {s: v["far"] < v["below"] for s, v in done["buckets"].items()}
    atomic_write_json(out / "done.json", done)
    return done


def plot(done, path):
    """Held-out loss by position of the variant and of the untrained base at the longer context."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for s, colour in zip(SPLITS, ("tab:blue", "tab:orange")):
        for key, style, label in (("by_position", "-", "long-context variant"), ("untrained", ":", "base, untrained")):
            p = np.asarray(done[key][s])
            smooth = np.convolve(p, np.ones(16) / 16, mode="valid")
            ax.plot(np.arange(len(smooth)) + 8, smooth, style, color=colour, label=f"{s}, {label}")
    ax.axvline(done["context"], color="gray", lw=0.8)
    ax.text(done["context"], ax.get_ylim()[1], " base context", va="top", fontsize=8)
    ax.set_xlabel("position in the window (tokens)")
    ax.set_ylabel("held-out loss (nats/token, 16-position mean)")
    ax.set_title(f"Long-context variant: {done['context']} → {done['seq_len']} tokens")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- CLI

def add_args(p):
    p.add_argument("--base", default="runs/default/pretrain", help="the base model's run")
    p.add_argument("--tokens", default="runs/default/tokenizer/tokens", help="the token shards it was trained on")
    p.add_argument("--out", default="runs/default/pretrain-long", help="the variant's run directory")
    p.add_argument("--factor", type=int, default=4, help="the variant's context as a multiple of the base's")
    trainer.add_args(p, steps=150, lr=1e-3, unit="windows")  # lr: a sixth of pretraining's
    p.set_defaults(batch_size=8)
    p.add_argument("--eval-windows", type=int, default=64, help="held-out long-document windows per split")
    p.add_argument("--quiet", action="store_true", help="no per-checkpoint lines")


def main(args):
    trainer.check_args(args)
    if args.factor < 3 or args.eval_windows < 1:
        raise UserError("--factor must be ≥ 3 (the measure compares positions past 2× with those below 1×) and "
                        "--eval-windows ≥ 1")
    if (Path(args.out) / "done.json").exists() and args.resume:
        print(f"{args.out} is complete")
        return json.loads((Path(args.out) / "done.json").read_text())
    done = train(args.base, args.tokens, args.out, args.factor, args.steps, args.batch_size, args.lr, args.seed,
                 args.eval_every, args.eval_windows, args.dtype, args.resume, args.quiet)
    plot(done, Path(args.out) / "by_position.png")
    for s, v in done["buckets"].items():
        u = done["untrained_buckets"][s]
        print(f"  {s}: loss at positions {3 * done['context'] // 4}-{done['context']} {v['below']:.4f}, "
              f"{2 * done['context']}-{done['seq_len']} {v['far']:.4f} (untrained {u['below']:.4f} / {u['far']:.4f})")
    return done
