"""The pretraining loop: one process or many under `torchrun` (DDP; gloo on CPU, nccl on GPU).

Every batch is a pure function of (seed, data step), so a resumed run sees exactly the batches the
uninterrupted run would have, and DDP ranks each take a slice of the same global batch a single process uses.
The run directory records config, git commit, command line, metrics.jsonl and checkpoints. SIGTERM or SIGUSR1
(a scheduler's preemption notice, `kill PID`) stops the run after the current step with a checkpoint, so an
interruption loses nothing; a second signal kills at once.
"""
import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from .. import config as C
from ..common import UserError, atomic_write_json, atomic_write_text, git_commit, command_line, iter_jsonl
from ..data import shards
from ..model.gpt import GPT
from ..perf import CPU_DTYPE, matmul_peak, resume_hint
from ..runs import read_config
from .. import checkpoint

EVAL_SPLITS = ("val_text", "val_code", "heldout_code")
DTYPES = ("bfloat16", "float32")  # float16 would need a gradient scaler, which this loop does not have
POSITIVE = ("depth", "vocab_size", "seq_len", "tokens_per_param", "lr", "embed_lr_mult", "readout_lr_mult",
            "micro_batch", "min_batch_seqs", "eval_every", "eval_tokens", "ckpt_every")
NON_NEGATIVE = ("width", "weight_decay", "grad_clip", "batch_tokens", "max_tokens")


class SpikeError(UserError, RuntimeError):
    pass


class ConfigError(UserError, ValueError):
    pass


class Preempted(UserError, RuntimeError):
    """A training stopped by a signal after checkpointing; the command line says how to go on (`resumable`)."""
    resumable = True


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


@contextlib.contextmanager
def stop_requests():
    """While training: the names of the stop signals received (a list, empty until one comes). The first signal
    only asks; the handler then goes back to the default, so a second one kills. Outside the main thread (where
    Python cannot install handlers) nothing is installed."""
    asked = []
    if threading.current_thread() is not threading.main_thread():
        yield asked
        return

    def ask(signum, frame):
        asked.append(signal.Signals(signum).name)
        signal.signal(signum, signal.SIG_DFL)

    old = {s: signal.signal(s, ask) for s in STOP_SIGNALS}
    try:
        yield asked
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def check_config(tc):
    """Values argparse lets through but training cannot use: one error naming each of them, before anything runs."""
    flag = lambda k: f"--{k.replace('_', '-')} {getattr(tc, k)}"
    bad = [f"{flag(k)}: must be > 0" for k in POSITIVE if not getattr(tc, k) > 0]
    bad += [f"{flag(k)}: must be >= 0" for k in NON_NEGATIVE if not getattr(tc, k) >= 0]
    bad += [f"{flag(k)}: must be in [0, 1)" for k in ("beta1", "beta2") if not 0 <= getattr(tc, k) < 1]
    bad += [f"{flag(k)}: must be in [0, 1]" for k in ("warmup_frac", "cooldown_frac") if not 0 <= getattr(tc, k) <= 1]
    if not tc.spike_factor > 1:
        bad.append(f"{flag('spike_factor')}: must be > 1")
    if tc.dtype not in DTYPES:
        bad.append(f"--dtype {tc.dtype}: must be one of {', '.join(DTYPES)}")
    if bad:
        raise ConfigError("invalid training config: " + "; ".join(bad))


# ----------------------------------------------------------------------------- data

def get_batch(data, data_step, n_seqs, seq_len, seed, rank=0, world=1):
    """Rank `rank`'s slice of global batch number `data_step`: random windows drawn from a generator seeded by
    (seed, data_step) only, so batches never depend on history, process count or restarts."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + data_step)
    ix = torch.randint(len(data) - seq_len - 1, (n_seqs,), generator=g)
    ix = ix.view(world, -1)[rank].tolist()
    buf = np.stack([data[i:i + seq_len + 1] for i in ix]).astype(np.int64)
    t = torch.from_numpy(buf)
    return t[:, :-1], t[:, 1:]


def eval_windows(data, seq_len, max_tokens):
    """Fixed, evenly spaced windows of a split: the same tokens at every evaluation and in every run."""
    n = max(1, min(max_tokens // seq_len, (len(data) - 1) // seq_len))
    starts = np.linspace(0, len(data) - seq_len - 1, n).astype(np.int64)
    buf = np.stack([data[s:s + seq_len + 1] for s in starts]).astype(np.int64)
    t = torch.from_numpy(buf)
    return t[:, :-1], t[:, 1:]


@torch.no_grad()
def loss_by_position(model, x, y, micro_batch=32):
    """Mean loss at each position over the windows x, y (N, T): how much a model gains from its context. The drop
    from the first positions to the late ones is Olsson et al. 2022's in-context learning score; past a trained
    context it shows whether a long-context variant uses it."""
    losses, cast = [], getattr(torch, CPU_DTYPE)
    for i in range(0, len(x), micro_batch):
        with torch.autocast("cpu", cast, enabled=cast != torch.float32):
            logits = model(x[i:i + micro_batch])
        losses.append(F.cross_entropy(logits.float().transpose(1, 2), y[i:i + micro_batch], reduction="none"))
    return torch.cat(losses).mean(0)


def all_reduce_sum(t, device):
    """Sum a small CPU tensor over ranks (through the device: nccl reduces only GPU tensors)."""
    t = t.to(device)
    dist.all_reduce(t)
    return t.cpu()


@torch.no_grad()
def evaluate(model, windows, micro_batch, autocast, rank=0, world=1):
    """Mean per-token loss (nats) on each split's fixed windows; ranks share the work."""
    model.eval()
    out = {}
    for name, (x, y) in windows.items():
        total = torch.zeros(2, dtype=torch.float64)
        xs, ys = x[rank::world], y[rank::world]
        dev = next(model.parameters()).device
        for i in range(0, len(xs), micro_batch):
            with autocast():
                loss = model(xs[i:i + micro_batch].to(dev), ys[i:i + micro_batch].to(dev), reduction="sum")
            total += torch.tensor([loss.item(), ys[i:i + micro_batch].numel()], dtype=torch.float64)
        if world > 1:
            total = all_reduce_sum(total, dev)
        out[name] = (total[0] / total[1]).item()
    model.train()
    return out


# ----------------------------------------------------------------------------- setup

def init_distributed():
    """(rank, world, device) from torchrun's environment, or a single process."""
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        return rank, world, torch.device("cuda", local)
    dist.init_process_group("gloo")
    return rank, world, torch.device("cpu")


def micro_batch_for(batch_seqs, world, wanted):
    """Largest micro-batch ≤ wanted that divides each rank's share of the global batch."""
    per_rank = batch_seqs // world
    if per_rank * world != batch_seqs:
        raise ConfigError(f"global batch of {batch_seqs} sequences does not split over {world} processes")
    return max(d for d in range(1, min(wanted, per_rank) + 1) if per_rank % d == 0)


def record_config(run, tc, derived, mc, tokens_dir, extra):
    cfg = dict(train=tc.to_dict(), derived=derived, model=mc.to_dict(), tokens_dir=str(tokens_dir), **extra)
    path = run / "config.json"
    if path.exists():
        old = read_config(run)  # fields added since the run began: defaults
        if (old["train"], old["model"]) != (cfg["train"], cfg["model"]):
            was, now = C.identity(old["train"], old["model"]), C.identity(cfg["train"], cfg["model"])
            diff = {k: (was.get(k), now.get(k)) for k in {**was, **now} if was.get(k) != now.get(k)}
            raise ConfigError(f"{run} was started with a different config {diff}; use a new --out directory"
                              + resume_hint(was.get("dtype"), now.get("dtype")))
        return old
    atomic_write_json(path, cfg)
    return cfg


def truncate_metrics(path, step):
    """On resume or rollback, drop the metrics logged after the checkpoint we go back to (they will be logged
    again), and a line torn by a crash. Spike events stay: the checkpoint already knows to skip their batches."""
    if not path.exists():
        return
    keep = [r for r in iter_jsonl(path, torn_tail=True) if r.get("step", 0) <= step or "event" in r]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))


def check_splits(splits, seq_len, tokens_dir):
    """Every eval split must hold one window of seq_len + 1 tokens. A shorter split is an error, not evaluated on
    a shorter window: its loss would be over fewer context positions, so not comparable with the other splits or
    other runs, and the scaling fits compare exactly these numbers."""
    for name, a in splits.items():
        if len(a) <= seq_len:
            raise UserError(f"{tokens_dir}: split {name} has {len(a)} tokens, but one evaluation window of "
                            f"--seq-len {seq_len} needs {seq_len + 1} (add data, or lower --seq-len)")


# ----------------------------------------------------------------------------- training

def train(tc: C.TrainConfig, run, tokens_dir, resume=False, quiet=False):
    """Train (or resume) the run in directory `run` on the token shards in `tokens_dir`. Returns the final
    evaluation dict. Raises if `run` holds a different config."""
    check_config(tc)
    run, tokens_dir = Path(run), Path(tokens_dir)
    rank, world, device = init_distributed()
    master = rank == 0
    torch.manual_seed(tc.seed)
    mc = tc.model_config()
    d = C.derive(tc)
    micro = micro_batch_for(d["batch_seqs"], world, tc.micro_batch)
    n_micro = d["batch_seqs"] // world // micro

    train_data = shards.load(tokens_dir, "train")
    evals = {s: shards.load(tokens_dir, s) for s in EVAL_SPLITS}
    check_splits(evals, tc.seq_len, tokens_dir)
    windows = {s: eval_windows(a, tc.seq_len, tc.eval_tokens) for s, a in evals.items()}
    tok_src = tokens_dir.parent / "tokenizer.json"
    if not tok_src.exists() and not (run / "tokenizer.json").exists():
        raise UserError(f"no tokenizer beside the tokens: {tok_src} is missing, and a run without its tokenizer "
                        f"cannot be sampled (train the tokenizer with `nanogpt4 tokenizer`)")
    ckpt_dir = run / "ckpt"
    if master:
        run.mkdir(parents=True, exist_ok=True)
        if (run / "ckpt").exists() and not resume and checkpoint.latest(ckpt_dir):
            raise FileExistsError(f"{run} already has checkpoints: pass --resume to continue it, or use a new --out")
        if not (run / "tokenizer.json").exists():
            shutil.copyfile(tok_src, run / "tokenizer.json")
        record_config(run, tc, d, mc, tokens_dir, dict(
            git_commit=git_commit(), command=command_line(), world_size=world, device=str(device),
            torch=torch.__version__, threads=torch.get_num_threads(),
            tokens_meta=json.loads((tokens_dir / "meta.json").read_text()) if (tokens_dir / "meta.json").exists() else None))
    if world > 1:
        dist.barrier()

    model = GPT(mc).to(device)
    model.init_weights(seed=tc.seed)
    opt = torch.optim.AdamW(model.param_groups(tc.lr, tc.weight_decay, tc.embed_lr_mult, tc.readout_lr_mult), betas=(tc.beta1, tc.beta2), eps=1e-8)
    base_lrs = [g["lr"] for g in opt.param_groups]
    dtype = getattr(torch, tc.dtype)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype != torch.float32 else contextlib.nullcontext
    fwd = torch.compile(model) if tc.compile else model
    ddp = torch.nn.parallel.DistributedDataParallel(fwd, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else fwd

    state = dict(step=0, data_step=0, skipped=[], ema=None, tokens=0, rollbacks=0)
    metrics_path = run / "metrics.jsonl"

    def save_ckpt():
        if master:
            checkpoint.save(ckpt_dir, model, opt, dict(state, config=mc.to_dict()))
            checkpoint.prune(ckpt_dir, keep=2)
        if world > 1:
            dist.barrier()

    def restore(path):
        meta = checkpoint.load(path, model, opt)
        for k in state:
            state[k] = meta[k]
        return meta

    def log(rec):
        if master:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")

    latest, rejected = checkpoint.latest_valid(ckpt_dir) if resume else (None, [])
    if rejected and latest is None:
        raise checkpoint.CheckpointError(f"no checkpoint in {ckpt_dir} verifies: " + "; ".join(rejected))
    if rejected and master:
        print("; ".join(rejected) + f"; resuming from the newest checkpoint that verifies, {latest}",
              file=sys.stderr, flush=True)
    if latest:
        restore(latest)
        if master:
            truncate_metrics(metrics_path, state["step"])
    else:
        if master and metrics_path.exists():
            metrics_path.unlink()
        save_ckpt()  # step 0: a rollback target exists from the start
        ev = evaluate(model, windows, tc.micro_batch, autocast, rank, world)  # the untrained baseline
        log(dict(step=0, tokens=0, **{f"val/{k}": v for k, v in ev.items()}))

    peak = matmul_peak(device, dtype) * 1e9  # measured FLOP/s of one process' device
    flops_tok = C.flops_per_token(model.cfg)
    bar = tqdm(total=d["steps"], initial=state["step"], disable=not master or quiet, unit="step", dynamic_ncols=True)
    t_last, tok_last = time.perf_counter(), state["tokens"]
    final = None  # the evaluation after the last step
    with stop_requests() as asked:
        while state["step"] < d["steps"]:
            if state["data_step"] in state["skipped"]:
                state["data_step"] += 1
                continue
            step = state["step"]
            for g, lr in zip(opt.param_groups, base_lrs):
                g["lr"] = lr * C.lr_factor(step, d)
            x, y = get_batch(train_data, state["data_step"], d["batch_seqs"], tc.seq_len, tc.seed, rank, world)
            loss_sum = torch.zeros((), dtype=torch.float64)
            for m in range(n_micro):
                xb, yb = x[m * micro:(m + 1) * micro].to(device), y[m * micro:(m + 1) * micro].to(device)
                sync = contextlib.nullcontext() if (world == 1 or m == n_micro - 1) else ddp.no_sync()
                with sync:
                    with autocast():
                        loss = ddp(xb, yb) / n_micro
                    loss.backward()
                loss_sum += loss.detach().double().cpu()
            if world > 1:
                loss_sum = all_reduce_sum(loss_sum, device) / world
            loss_val = loss_sum.item()

            ema = state["ema"]
            if not math.isfinite(loss_val) or (ema is not None and step > d["warmup_steps"] and loss_val > tc.spike_factor * ema):
                rollbacks, skipped = state["rollbacks"] + 1, set(state["skipped"]) | {state["data_step"]}
                if rollbacks > 10:
                    raise SpikeError(f"more than 10 loss spikes at step {step}; giving up (lower --lr?)")
                bad = state["data_step"]
                opt.zero_grad(set_to_none=True)
                meta = restore(checkpoint.latest_valid(ckpt_dir)[0])
                if master:
                    truncate_metrics(metrics_path, meta["step"])
                state["rollbacks"], state["skipped"] = rollbacks, sorted(skipped)
                save_ckpt()  # the checkpoint now knows to skip the batch: a resume will not replay the spike
                log(dict(step=step, event="spike", loss=loss_val, ema=ema, skipped_batch=bad, rolled_back_to=meta["step"]))
                if master:
                    tqdm.write(f"loss spike at step {step} ({loss_val:.3f} vs running {ema}): rolled back to step "
                               f"{meta['step']}, skipping batch {bad}")
                bar.n = state["step"]
                bar.refresh()
                t_last, tok_last = time.perf_counter(), state["tokens"]
                continue

            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip or float("inf")).item()
            opt.step()
            opt.zero_grad(set_to_none=True)
            state["ema"] = loss_val if ema is None else 0.95 * ema + 0.05 * loss_val
            state["step"] += 1
            state["data_step"] += 1
            state["tokens"] += d["batch_seqs"] * tc.seq_len
            bar.update(1)

            last = state["step"] == d["steps"]
            if state["step"] % 10 == 0 or last:
                now = time.perf_counter()
                tok_s = (state["tokens"] - tok_last) / (now - t_last)
                mfu = tok_s * flops_tok / (peak * world)
                log(dict(step=state["step"], tokens=state["tokens"], loss=loss_val, lr=tc.lr * C.lr_factor(step, d),
                         grad_norm=gnorm, tok_s=tok_s, mfu=mfu, time=time.time()))
                bar.set_postfix(loss=f"{loss_val:.3f}", tok_s=f"{tok_s:,.0f}", mfu=f"{mfu:.0%}")
            if state["step"] % tc.eval_every == 0 or last:
                ev = evaluate(model, windows, tc.micro_batch, autocast, rank, world)
                final = ev if last else None
                log(dict(step=state["step"], tokens=state["tokens"], **{f"val/{k}": v for k, v in ev.items()}))
                if master and not quiet:
                    tqdm.write(f"step {state['step']}: " + "  ".join(f"{k} {v:.4f}" for k, v in ev.items()))
            stop = bool(asked)
            if world > 1:  # every rank stops at the same step, or the checkpoint's barrier would hang
                stop = all_reduce_sum(torch.tensor(float(stop), dtype=torch.float64), device).item() > 0
            if state["step"] % tc.ckpt_every == 0 or last or stop:
                save_ckpt()
            if stop and not last:
                why = asked[0] if asked else "another rank's signal"
                log(dict(step=state["step"], event="stopped", signal=why))
                raise Preempted(f"{run}: stopped by {why} at step {state['step']} of {d['steps']}, checkpointed")
            if state["step"] % 10 == 0 or last:
                t_last, tok_last = time.perf_counter(), state["tokens"]  # eval and checkpoint time excluded from tok/s
        bar.close()
    if final is None:  # resumed after the last step
        final = evaluate(model, windows, tc.micro_batch, autocast, rank, world)
    if master:
        atomic_write_json(run / "done.json", dict(step=state["step"], tokens=state["tokens"], final=final,
                                                  skipped=state["skipped"], params=model.num_params(),
                                                  flops=flops_tok * state["tokens"]))
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return final


# ----------------------------------------------------------------------------- CLI

def add_args(p):
    p.add_argument("--out", default="runs/default/pretrain", help="run directory (named --out, not --run: torchrun claims that prefix)")
    p.add_argument("--tokens", default="runs/default/tokenizer/tokens", help="token shards from `nanogpt4 tokenizer`")
    p.add_argument("--resume", action="store_true", help="continue the run from its newest checkpoint that verifies")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-evaluation lines")
    p.add_argument("--registered", default=None, help="a sealed prediction record (`nanogpt4 scaling predict`): train "
                   "exactly the config it registers for this --out, and nothing without it (no config flags)")
    for f in fields(C.TrainConfig):
        if f.name == "extra":
            continue
        flag, help_ = "--" + f.name.replace("_", "-"), C.HELP[f.name]
        if f.type is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_)
        else:
            p.add_argument(flag, type=f.type, default=None, help=help_)


def config_from_args(args, base=None):
    tc = base or C.TrainConfig()
    for f in fields(C.TrainConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            setattr(tc, f.name, v)
    return tc


def vocab_from_tokens(tokens_dir):
    meta = Path(tokens_dir) / "meta.json"
    return json.loads(meta.read_text()).get("vocab_size") if meta.exists() else None


def registered_config(args):
    """The TrainConfig a sealed record registers for the run in args.out: the scaling stage's target is trained
    only as it was predicted — refused for a changed record, another run directory, config flags beside it, or a
    model the code now builds differently."""
    from ..scaling import registry
    record = registry.load(args.registered)
    if Path(record["target_run"]).resolve() != Path(args.out).resolve():
        raise registry.RegistryError(f"{args.registered} registers the run {record['target_run']}, not {args.out}")
    flags = [f.name for f in fields(C.TrainConfig) if getattr(args, f.name, None) is not None]
    if flags:
        raise registry.RegistryError(f"--registered trains exactly the registered config; drop --{flags[0].replace('_', '-')}")
    registered = record["target_config"]
    tc = C.TrainConfig(**{k: v for k, v in registered.items() if not k.startswith("model.")})
    registry.check_target(record, tc.identity())
    return tc


def main(args):
    if args.registered:
        tc = registered_config(args)
    else:
        tc = config_from_args(args)
        if args.vocab_size is None and (v := vocab_from_tokens(args.tokens)):
            tc.vocab_size = v
    check_config(tc)
    d = C.derive(tc)
    if int(os.environ.get("RANK", 0)) == 0 and not args.quiet:
        mc = tc.model_config()
        print(f"depth {tc.depth}: width {mc.n_embd}, heads {mc.n_head}/{mc.n_kv_head} kv, {d['params'] / 1e6:.2f}M params, "
              f"{d['tokens'] / 1e6:.1f}M tokens in {d['steps']} steps of {d['batch_seqs']}×{tc.seq_len}")
    if (Path(args.out) / "done.json").exists() and args.resume:
        print(f"{args.out} is complete")
        return
    train(tc, args.out, args.tokens, resume=args.resume, quiet=args.quiet)
