"""The vision stage (`nanogpt4 vision`): a chat model learns to see. A ViT encoder and projector (model/vision.py),
trained from scratch, feed the decoder image embeddings at `<|image|>` placeholders (chat.py renders each image
part as `tokens` of them), in two phases as in LLaVA (Liu et al. 2023) and nanoVLM:

  1. alignment     the decoder frozen, only the encoder and projector learn to answer the image questions
  2. joint         everything learns, at the decoder's fine-tuning rate, each batch mixing image conversations
                   with SFT text conversations so text ability does not regress: on those the loss is the KL from
                   the frozen chat model's next-token distribution at the assistant tokens (learning without
                   forgetting, Li & Hoiem 2016), not their cross-entropy, which memorised SFT's 2,400 training
                   conversations and raised the held-out text loss by 2.3% (NOTES.md)

The loss is on the answer tokens only (chat.render's mask). The run directory keeps the conventions of the other
trainers: config.json (the decoder config with its image token, the encoder config, settings, base run and data
sha256), the decoder as a plain GPT checkpoint in ckpt/ and the encoder (with the optimizer) in vision/ at the
same step, metrics.jsonl, done.json; `--resume` continues exactly (the batch order is a function of seed and step).

Measured at the end on every held-out task (done.json, `evaluate`) through the evals framework: greedy answers,
normalised match, with stderr, chance, and the best text-only baseline: the same model asked the same questions
without the images, and the majority answer of the training set. The held-out text loss (SFT's held-out
conversations, assistant tokens) is measured before and after.
"""
import json
import shutil
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import chat
from ..common import UserError, atomic_write_json, iter_jsonl
from ..perf import CPU_DTYPE
from ..evals.templates import accuracy_report, normalize
from ..model.vision import VisionConfig, VisionEncoder, normalise, render
from ..posttrain import trainer
from ..posttrain.sft import examples as text_examples, heldout_loss, padded
from ..tokenizer import Tokenizer


WARMUP = 100  # the encoder's linear warmup: a ViT from scratch at 1e-3 without one never learned to read (NOTES.md)


def load_rows(tok, path, vcfg, split):
    """The image conversations of `split` in the JSONL at `path`: rendered ids and mask, images as uint8
    (n, 3, S, S), and the row (for evaluation). A row is a visual question (`messages` + `answer`, what
    `nanogpt4 vision-data` writes: the answer becomes the assistant turn) or any conversation in SFT's format
    whose assistant turns are trained on (multi-turn, several images, system messages)."""
    out = []
    for row in iter_jsonl(path):
        if row.get("split", "train") != split:
            continue
        msgs = row["messages"] + ([{"role": "assistant", "content": row["answer"]}] if "answer" in row else [])
        r, views = render(tok, msgs, vcfg, generate=False)
        imgs = torch.cat(views) if views else torch.zeros(0, 3, vcfg.image_size, vcfg.image_size, dtype=torch.uint8)
        out.append(dict(ids=r.ids, mask=r.mask, images=imgs, row=row))
    return out


def image_batch(items, pad):
    x, y, m = padded([(e["ids"], e["mask"]) for e in items], pad)
    return x, y, m, normalise(torch.cat([e["images"] for e in items]))


def mixed_batch(data, lengths, text, step, size, text_share, seed):
    """Image conversations (grouped by length: a tiled image's row is several times a one-view row's length) and
    (joint phase) text conversations of batch `step`."""
    n_text = round(size * text_share) if text else 0
    return (trainer.batch(data, step, size - n_text, seed, lengths),
            trainer.batch(text, step, n_text, seed) if n_text else [])


def train(base, data_dir, text_path, out, align_steps=200, joint_steps=2150, batch_size=32, lr=3e-4, decoder_lr=3e-4,
          text_share=0.25, seed=0, eval_every=500, dtype=CPU_DTYPE, resume=False, quiet=False, per_task=None,
          compile=False):
    """Train the vision model from the chat model `base` on the image sets in `data_dir` (`nanogpt4 vision-data`),
    mixing in the conversations of `text_path` (SFT's); returns done.json."""
    data_dir, text_path = Path(data_dir), Path(text_path)
    steps = align_steps + joint_steps
    cfg = dict(align_steps=align_steps, joint_steps=joint_steps, batch_size=batch_size, lr=lr, decoder_lr=decoder_lr,
               text_share=text_share, seed=seed, eval_every=eval_every, dtype=dtype,
               text=dict(path=str(text_path.resolve())))
    image_token = Tokenizer.load(Path(base) / "tokenizer.json").special("image")
    b = trainer.setup(base, data_dir / "train.jsonl", out, cfg, resume, kind="vision",
                      model_update=dict(image_token_id=image_token))
    out, model, tok = Path(out), b.model, b.tok
    vcfg = VisionConfig.for_decoder(model.cfg)
    record = json.loads((out / "config.json").read_text())
    if "encoder" not in record:
        atomic_write_json(out / "config.json", dict(record, encoder=vcfg.to_dict()))
    elif record["encoder"] != vcfg.to_dict():
        raise UserError(f"{out} was started with another encoder config; use a new --out")
    done_path = out / "done.json"
    if resume and done_path.exists() and json.loads(done_path.read_text()).get("step") == steps:
        print(f"{out} is complete")
        return json.loads(done_path.read_text())
    done_path.unlink(missing_ok=True)
    torch.manual_seed(seed)
    encoder = VisionEncoder(vcfg)
    seq_len = model.cfg.seq_len
    data = [e for e in load_rows(tok, data_dir / "train.jsonl", vcfg, "train") if len(e["ids"]) <= seq_len + 1]
    held = [e for e in load_rows(tok, data_dir / "heldout.jsonl", vcfg, "heldout") if len(e["ids"]) <= seq_len + 1]
    text, _ = text_examples(tok, text_path, seq_len, "train")
    text_held, _ = text_examples(tok, text_path, seq_len, "heldout")
    lengths = tuple(len(e["ids"]) for e in data)
    if len(data) < batch_size:
        raise UserError(f"{data_dir}: {len(data)} training rows fit the context, fewer than a batch")
    anchor = trainer.frozen(model)  # the chat model as it came: the text anchor
    if compile:  # regional: one compiled block serves every layer of both models and every row length (NOTES.md)
        for block in [*model.blocks, *anchor.blocks]:
            block.compile(dynamic=True)
    opt = trainer.optimizer(model, decoder_lr, b.config, heads=[])
    opt.add_param_group(dict(params=list(encoder.parameters()), lr=lr, initial_lr=lr, weight_decay=0.0))
    cast, pad, metrics = trainer.autocast(dtype), tok.eot_id, out / "metrics.jsonl"
    step = trainer.resume(out, resume, [encoder, model], opt, root="vision")
    if step == 0:
        trainer.log(metrics, dict(step=0, text_heldout_loss=heldout_loss(model, text_held, batch_size, pad, cast)))
    t0 = time.perf_counter()
    model.train(), encoder.train()
    while step < steps:
        joint = step >= align_steps
        model.requires_grad_(joint)
        trainer.decay(opt, max(0, step - align_steps), max(1, joint_steps))  # the decoder's groups: the joint phase
        opt.param_groups[-1]["lr"] = lr * min(1.0, (step + 1) / WARMUP) * (1 - 0.9 * step / steps)  # the encoder's
        imgs, texts = mixed_batch(data, lengths, text if joint else [], step, batch_size, text_share, seed)
        x, y, m, px = image_batch(imgs, pad)
        with cast():
            loss = model(x, y, images=encoder.embed(px), loss_mask=m)
            if texts:
                tx, _, tm = padded(texts, pad)
                text_loss = kl_to(anchor, model, tx, tm)
                loss_all = (loss * len(imgs) + text_loss * len(texts)) / (len(imgs) + len(texts))
            else:
                loss_all = loss
        loss_all.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(encoder.parameters()), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        rec = dict(step=step, phase="joint" if joint else "align", loss=loss.item())
        if texts:
            rec["text_kl"] = text_loss.item()
        if step % eval_every == 0 or step == steps:
            rec["heldout_loss"] = image_loss(model, encoder, held, batch_size, pad, cast)
            trainer.save(out, step, model.cfg.to_dict(), [encoder, model], opt, root="vision")
            if not quiet:
                print(f"vision step {step}/{steps} ({rec['phase']}): loss {rec['loss']:.3f}, held-out "
                      f"{rec['heldout_loss']:.3f}", flush=True)
        trainer.log(metrics, rec)
    seconds = round(time.perf_counter() - t0, 1)
    model.eval(), encoder.eval()
    text_before = next(iter_jsonl(metrics))["text_heldout_loss"]
    text_after = heldout_loss(model, text_held, batch_size, pad, cast)
    log = print if not quiet else (lambda *a: None)
    tasks = evaluate(out, data_dir, [e["row"] for e in data], per_task=per_task, log=log)
    done = dict(step=step, train_rows=len(data), heldout_rows=len(held), seconds=seconds,
                text_heldout_loss_before=text_before, text_heldout_loss_after=text_after,
                text_loss_change=text_after / text_before - 1, tasks=tasks)
    atomic_write_json(out / "done.json", done)
    return done


def kl_to(anchor, model, idx, mask):
    """Mean KL(anchor ‖ model) of the next-token distributions at the positions where mask is 1 (read out there
    alone, as GPT.forward does for a masked loss)."""
    keep = mask.bool()
    with torch.no_grad():
        target = F.log_softmax(anchor.readout(anchor(idx, features=True), idx, keep).float(), -1)
    logp = F.log_softmax(model.readout(model(idx, features=True), idx, keep).float(), -1)
    return F.kl_div(logp, target, log_target=True, reduction="batchmean")


@torch.no_grad()
def image_loss(model, encoder, data, size, pad, cast):
    """Mean loss per answer token over the held-out image conversations."""
    model.eval(), encoder.eval()
    total, count = 0.0, 0
    for i in range(0, len(data), size):
        x, y, m, px = image_batch(data[i:i + size], pad)
        with cast():
            total += model(x, y, images=encoder.embed(px), loss_mask=m, reduction="sum").item()
        count += int(m.sum())
    model.train(), encoder.train()
    return total / max(count, 1)


def evaluate(run, data_dir, train_rows, per_task=None, log=print):
    """Every held-out task through the evals framework (the `vqa-<task>` specs `nanogpt4 vision-data` writes, the
    VQA template, the run as a local completion function): accuracy with the images and without them (same
    model, same questions), beside chance and the training set's majority answer per question kind; records in
    run/evals/ (rewritten: they measure the run's final weights)."""
    from ..evals import completion, recorder, registry, run as evals_run
    shutil.rmtree(Path(run) / "evals", ignore_errors=True)
    reg = registry.default_registry([Path(data_dir) / "registry"], wheel=False)
    fn = completion.LocalCompletion(run, chat_template=True, max_rows=64)
    majority = {}  # per question kind (a task's rows with the same answer set): its most common training answer
    kind = lambda r: (r["task"], tuple(r.get("choices") or ()))  # noqa: E731
    for r in (r for r in train_rows if "answer" in r):
        majority.setdefault(kind(r), Counter())[normalize(r["answer"])] += 1
    tasks = [n[4:] for n in reg.get_eval_set("vision") if not n.endswith("-text-only")]
    out = {}
    for task in tasks:
        reports = {}
        for name in (f"vqa-{task}", f"vqa-{task}-text-only"):
            path = Path(run) / "evals" / f"{name}.jsonl"
            reports[name] = evals_run.run_eval(reg.get_eval(name), reg, [fn], path, max_samples=per_task, threads=64,
                                               log=log)
        seen, blind = reports[f"vqa-{task}"], reports[f"vqa-{task}-text-only"]
        samples = [e["data"] for e in recorder.read(Path(run) / "evals" / f"vqa-{task}.jsonl")[1]
                   if e["type"] == "sample"]
        top = [majority.get((task, tuple(d.get("choices") or ())), Counter({"": 0})).most_common(1)[0][0]
               for d in samples]
        out[task] = dict(with_image=pick(seen), text_only=pick(blind),
                         majority=pick(accuracy_report([t == normalize(str(d["expected"]))
                                                        for t, d in zip(top, samples)])),
                         chance=seen["chance"],
                         examples=[dict(question=chat.text_of(d["prompt"][-1]["content"]), answer=d["expected"],
                                        model=d["sampled"].strip(), image=image_of(d["prompt"]))
                                   for d in samples[:4]])
        best = max(out[task]["text_only"]["accuracy"], out[task]["majority"]["accuracy"])
        out[task]["margin_over_text_only"] = out[task]["with_image"]["accuracy"] - best
        log(f"  {task:8s} with image {seen['accuracy']:.3f} ± {seen['stderr']:.3f}, text only "
            f"{blind['accuracy']:.3f}, majority {out[task]['majority']['accuracy']:.3f}, chance {seen['chance']:.3f}")
    fn.engine.close()
    return out


def pick(report):
    return dict(accuracy=report["accuracy"], stderr=report["stderr"], n=report.get("samples", report.get("n")))


def image_of(prompt):
    """The first image of a chat prompt (its data URL), for the report card's examples."""
    return next((p["image_url"]["url"] for m in prompt if isinstance(m["content"], list) for p in m["content"]
                 if p.get("type") == "image_url"), None)


# ----------------------------------------------------------------------------- CLI

def add_args(p):
    p.add_argument("--base", default="runs/default/sft", help="the chat run that learns to see")
    p.add_argument("--data", default="runs/default/vision/data", help="image sets (`nanogpt4 vision-data`)")
    p.add_argument("--text", default="runs/default/posttrain/data/sft.jsonl",
                   help="text conversations mixed into the joint phase; their held-out split measures text loss")
    p.add_argument("--out", default="runs/default/vision", help="the vision run directory")
    p.add_argument("--align-steps", type=int, default=200, help="steps with the decoder frozen")
    p.add_argument("--joint-steps", type=int, default=2150, help="steps training everything")
    p.add_argument("--batch-size", type=int, default=32, help="conversations per step")
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate of the encoder and projector (after a "
                                                          f"{WARMUP}-step warmup, decayed over the whole run)")
    p.add_argument("--decoder-lr", type=float, default=3e-4, help="peak learning rate of the decoder's hidden "
                                                                  "matrices in the joint phase (muP groups)")
    p.add_argument("--text-share", type=float, default=0.25, help="share of each joint batch that is text")
    p.add_argument("--per-task", type=int, default=None, help="held-out rows evaluated per task (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the batch order and the encoder's initialisation")
    p.add_argument("--eval-every", type=int, default=500, help="steps between held-out losses and checkpoints")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default=CPU_DTYPE,
                   help=f"autocast dtype on CPU (default: perf.fast_dtype, here {CPU_DTYPE})")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("--compile", action="store_true", help="torch.compile the decoder's blocks (~70 s once on 2 "
                                                          "cores, then ~20%% faster steps)")


def main(args):
    if min(args.align_steps, args.joint_steps) < 0 or args.batch_size < 2 or not 0 <= args.text_share < 1 \
            or not args.lr > 0 or not args.decoder_lr > 0 or args.align_steps + args.joint_steps < 1:
        raise UserError("--align-steps/--joint-steps ≥ 0 (not both 0), --batch-size ≥ 2, --text-share in [0, 1), "
                        "learning rates > 0")
    done = train(args.base, args.data, args.text, args.out, args.align_steps, args.joint_steps, args.batch_size,
                 args.lr, args.decoder_lr, args.text_share, args.seed, args.eval_every, args.dtype, args.resume,
                 per_task=args.per_task, compile=args.compile)
    print(json.dumps({k: v for k, v in done.items() if k != "tasks"}))
    for task, t in done["tasks"].items():
        print(f"  {task:10s} with image {t['with_image']['accuracy']:.3f} ± {t['with_image']['stderr']:.3f}  "
              f"text only {t['text_only']['accuracy']:.3f}  majority {t['majority']['accuracy']:.3f}  "
              f"chance {t['chance']:.3f}  (n {t['with_image']['n']})")
    return done
