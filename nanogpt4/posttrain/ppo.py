"""RLHF with PPO (`nanogpt4 rlhf`; Ouyang et al. 2022, Ziegler et al. 2019): the SFT policy samples answers to
prompts through the engine (engine.py, on the in-memory policy), the reward model scores each answer, an optional
rule-based reward (the RBRM's: refuse disallowed requests, do not refuse allowed, sensitive or ordinary ones, its
weights fitted on top of the reward model) is added with its weight, and every sampled token pays a KL penalty to
the frozen SFT reference. Advantages by GAE on a value head that shares the
policy's trunk; PPO's clipped policy and value losses (objectives.py), a few epochs over each batch of rollouts.

Logged per step: reward (model, rule-based, total), KL to the reference, entropy, clip fraction, answer length, and
the refusal rate of the answers per prompt category (behaviour.py's detector).
The run directory holds the policy as a plain GPT checkpoint (ckpt/: what `nanogpt4 serve`, the evals and
`runs.load` read) and the training state beside it (state/: value head + optimizer), so `--resume` continues.
"""
import json
import random
import time
from pathlib import Path

import torch
import torch.nn as nn

from .. import chat
from ..common import UserError, atomic_write_json, iter_jsonl, sha256_file
from ..engine import Engine, SamplingParams
from . import objectives as O
from . import reward as R
from . import trainer


class Value(nn.Module):
    """The value head: a scalar per position from the policy trunk's final features (zero-initialised)."""

    def __init__(self, n_embd):
        super().__init__()
        self.head = nn.Linear(n_embd, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, h):
        return self.head(h.float()).squeeze(-1)


def rollout(engine, tok, prompts, max_tokens, seed, temperature=1.0):
    """Sample one answer per prompt (conversations ending before the answer); returns [(prompt ids, answer ids,
    answer text)] with the closing stop token kept in the ids (the policy chose to end)."""
    ids = [chat.render(tok, p["messages"]).ids for p in prompts]
    params = [SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed * 100_003 + i)
              for i in range(len(ids))]
    outs = engine.generate(ids, params)
    return [(i, o.choices[0].token_ids, o.choices[0].text) for i, o in zip(ids, outs)]


def batch_tensors(samples, pad):
    """ids (B, T) of prompt + answer, targets, and the mask over the answer's tokens among the targets."""
    T = max(len(p) + len(a) for p, a, _ in samples)
    x = torch.full((len(samples), T), pad, dtype=torch.long)
    m = torch.zeros((len(samples), T), dtype=torch.float)
    for b, (p, a, _) in enumerate(samples):
        x[b, :len(p) + len(a)] = torch.tensor(p + a)
        m[b, len(p):len(p) + len(a)] = 1
    return x[:, :-1], x[:, 1:], m[:, 1:]


def forward(policy, value, x, y, temperature=1.0):
    """Per-token log-probabilities of the targets (under the sampling temperature's distribution, the one the
    rollouts came from), values and entropies."""
    h = policy(x, features=True)
    logits = policy.readout(h, x).float() / temperature
    logp_all = torch.log_softmax(logits, -1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp_all.gather(-1, y[..., None]).squeeze(-1), value(h), entropy


def scores(rm, rm_tok, prompts, samples, extra, weight):
    """The reward model's score of each answer, the rule-based reward (weighted) and their sum."""
    r_model = R.score(rm, rm_tok, [p["messages"] for p in prompts], [text for _, _, text in samples])
    r_rule = torch.tensor([extra(p, text) for p, (_, _, text) in zip(prompts, samples)]) if extra else \
        torch.zeros(len(samples))
    return r_model, r_rule, r_model + weight * r_rule


def train(sft_run, rm_run, prompts_path, out, steps=60, prompts_per_step=16, max_tokens=48, lr=1e-4, kl_coef=0.05,
          epochs=2, minibatch=8, clip=0.2, value_coef=0.5, seed=0, extra=None, extra_weight=1.0, dtype="float32",
          resume=False, quiet=False, temperature=1.0, extra_id=None):
    """PPO from the SFT run against the reward model in `rm_run` on the training prompts at `prompts_path`;
    `extra(prompt, answer) -> float` is an optional rule-based reward added with `extra_weight`, named by `extra_id`
    in the run's config (a run resumes only under the same reward). Returns done.json."""
    rm, rm_tok = R.load(rm_run)
    cfg = dict(steps=steps, prompts_per_step=prompts_per_step, max_tokens=max_tokens, lr=lr, kl_coef=kl_coef,
               epochs=epochs, minibatch=minibatch, clip=clip, value_coef=value_coef, seed=seed,
               extra_weight=extra_weight if extra else 0.0, dtype=dtype, reward_model=str(Path(rm_run).resolve()),
               temperature=temperature, **({"extra": extra_id} if extra and extra_id else {}))
    b = trainer.setup(sft_run, prompts_path, out, cfg, resume, kind="rlhf")
    out, tok, policy = Path(out), b.tok, b.model.train()
    reference = trainer.frozen(policy)  # the SFT weights, frozen
    value = Value(policy.cfg.n_embd)
    prompts = [p for p in iter_jsonl(prompts_path) if p.get("split", "train") == "train"
               and len(chat.render(tok, p["messages"]).ids) + max_tokens <= policy.cfg.seq_len]
    if len(prompts) < prompts_per_step:
        raise UserError(f"{prompts_path}: {len(prompts)} training prompts fit the context with {max_tokens} new "
                        f"tokens, fewer than --prompts-per-step")
    opt = trainer.optimizer(policy, lr, b.config, heads=[value])
    engine = Engine(policy, tok, max_rows=prompts_per_step)
    metrics = out / "metrics.jsonl"
    step = trainer.resume(out, resume, [value, policy], opt, root="state")
    t0 = time.perf_counter()
    while step < steps:
        batch = random.Random(seed * 1_000_003 + step).sample(prompts, prompts_per_step)
        rec = ppo_step(policy, reference, value, opt, engine, tok, rm, rm_tok, batch, extra, extra_weight, kl_coef,
                       epochs, minibatch, clip, value_coef, max_tokens, seed * 1_000_003 + step, temperature)
        step += 1
        rec["step"] = step
        if step % 10 == 0 or step == steps:
            trainer.save(out, step, policy.cfg.to_dict(), [value, policy], opt, root="state")
        if not quiet:
            print(f"rlhf step {step}/{steps}: reward {rec['reward']:.3f} (model {rec['reward_model']:.3f}, rules "
                  f"{rec['reward_rules']:.3f}), kl {rec['kl']:.4f}, length {rec['answer_tokens']:.1f}, refusals "
                  + ", ".join(f"{k[8:]} {v:.2f}" for k, v in rec.items() if k.startswith("refusal/")), flush=True)
        trainer.log(metrics, rec)
    rows = list(iter_jsonl(metrics))
    mean = lambda part, k: sum(r[k] for r in part) / len(part)  # noqa: E731
    done = dict(step=step, prompts=len(prompts), seconds=round(time.perf_counter() - t0, 1),
                reward_first=mean(rows[:5], "reward"), reward_last=mean(rows[-5:], "reward"),
                kl_last=mean(rows[-5:], "kl"))
    atomic_write_json(out / "done.json", done)
    return done


def ppo_step(policy, reference, value, opt, engine, tok, rm, rm_tok, prompts, extra, extra_weight, kl_coef,
             epochs, minibatch, clip, value_coef, max_tokens, seed, temperature=1.0):
    """One PPO iteration: roll out, score, compute advantages, then `epochs` passes of minibatch updates."""
    samples = rollout(engine, tok, prompts, max_tokens, seed, temperature)
    r_model, r_rule, total = scores(rm, rm_tok, prompts, samples, extra, extra_weight)
    x, y, mask = batch_tensors(samples, tok.eot_id)
    with torch.no_grad():
        old_logp, old_values, _ = forward(policy, value, x, y, temperature)
        ref_logp = O.token_logprobs(reference(x).float() / temperature, y)
    kl = O.kl_penalty(old_logp, ref_logp) * mask
    rewards = -kl_coef * kl
    last = (mask * torch.arange(mask.size(1))).argmax(1)  # each answer's last token gets its score
    rewards[torch.arange(len(samples)), last] += total
    adv, returns = O.gae(rewards, old_values * mask, mask)
    adv = O.whiten(adv, mask)
    stats = dict(entropy=0.0, clipfrac=0.0, policy_loss=0.0, value_loss=0.0)
    for _ in range(epochs):
        order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed))
        for i in range(0, len(samples), minibatch):
            j = order[i:i + minibatch]
            logp, values, entropy = forward(policy, value, x[j], y[j], temperature)
            pl, vl, cf = O.ppo_losses(logp, old_logp[j], adv[j], values, old_values[j], returns[j], mask[j], clip)
            (pl + value_coef * vl).backward()
            torch.nn.utils.clip_grad_norm_(list(policy.parameters()) + list(value.parameters()), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            for k, v in (("entropy", O.masked_mean(entropy.detach(), mask[j])), ("clipfrac", cf),
                         ("policy_loss", pl.detach()), ("value_loss", vl.detach())):
                stats[k] += v.item() / (epochs * -(-len(samples) // minibatch))
    return dict(reward=total.mean().item(), reward_model=r_model.mean().item(), reward_rules=r_rule.mean().item(),
                kl=(kl.sum(1) / mask.sum(1).clamp(min=1)).mean().item(), answer_tokens=mask.sum(1).mean().item(),
                **stats, **refusal_rates(prompts, samples))


def refusal_rates(prompts, samples):
    """The share of this iteration's answers that refuse (behaviour.py's phrase-level detector), per prompt
    category present, with its count: {"refusal/disallowed": rate, "n/disallowed": count, ...}."""
    from .behaviour import refuses
    out = {}
    for cat in sorted({p["category"] for p in prompts}):
        flags = [refuses(text) for p, (_, _, text) in zip(prompts, samples) if p["category"] == cat]
        out[f"refusal/{cat}"], out[f"n/{cat}"] = sum(flags) / len(flags), len(flags)
    return out


# ----------------------------------------------------------------------------- CLI

def add_args(p):
    p.add_argument("--sft", default="runs/default/sft", help="the SFT run: the starting policy and the KL reference")
    p.add_argument("--rm", default="runs/default/rm", help="the reward-model run")
    p.add_argument("--prompts", default="runs/default/posttrain/data/prompts.jsonl",
                   help="prompts (JSONL: messages up to the answer, category, split); the train split is used")
    p.add_argument("--out", default="runs/default/rlhf", help="the RLHF run directory")
    p.add_argument("--steps", type=int, default=60, help="PPO iterations (each: rollouts, then updates)")
    p.add_argument("--prompts-per-step", type=int, default=16, help="answers sampled per iteration")
    p.add_argument("--max-tokens", type=int, default=48, help="longest answer sampled")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature of the rollouts (the "
                                                                   "policy and KL are taken at it too)")
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate of the hidden matrices")
    p.add_argument("--kl-coef", type=float, default=0.05, help="per-token KL penalty to the SFT reference")
    p.add_argument("--epochs", type=int, default=2, help="passes over each iteration's rollouts")
    p.add_argument("--minibatch", type=int, default=8, help="answers per update")
    p.add_argument("--clip", type=float, default=0.2, help="PPO's ratio clip")
    p.add_argument("--rbrm-weight", type=float, default=1.0, help="weight of the RBRM reward (0: reward model only)")
    p.add_argument("--rbrm-data", default="runs/default/posttrain/data",
                   help="the post-training data whose labelled completions train the RBRM's classifier")
    p.add_argument("--seed", type=int, default=0, help="seed of prompt order and sampling")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")


SAFE = ("chat", "instruction", "steer")  # known-safe requests: the RBRM rewards them as allowed ones (no refusal)


def rbrm_reward(data_dir, out, rm_run):
    """The fitted RBRM (offline classifier backend, weights fitted on top of the reward model's scores) as PPO's
    extra reward on every prompt: disallowed and sensitive prompts by their own weights, allowed ones and every
    known-safe request (chat, instruction, steering) by the allowed weights, so refusing any of them costs."""
    from ..serve import moderation
    from . import rbrm
    model, report = rbrm.build(data_dir, out, moderation.load(), rm_run=rm_run)
    k = report["ranking"]
    print(f"rbrm: held-out refusal accuracy {report['classifier']['heldout']['accuracy']:.3f}; ranking accuracy of "
          f"the total reward: RM alone {k['rm_alone']:.3f}, RM + rubric {k['rm_plus_rubric']:.3f}, RM + fitted "
          f"weights {k['after']:.3f}", flush=True)

    def reward(prompt, answer):
        user = next((m["content"] for m in reversed(prompt["messages"]) if m["role"] == "user"), "")
        category = "allowed" if prompt.get("category") in SAFE else prompt.get("category")
        return model.rewards([user], [answer], [category])[0]
    return reward


def main(args):
    if min(args.steps, args.prompts_per_step, args.max_tokens, args.epochs, args.minibatch) < 1 or not args.lr > 0 \
            or not 0 < args.temperature <= 2:
        raise UserError("--steps, --prompts-per-step, --max-tokens, --epochs and --minibatch must be ≥ 1; --lr > 0; "
                        "--temperature in (0, 2]")
    if args.resume and (Path(args.out) / "done.json").exists():  # finished: its RBRM stays the one it trained with
        done = json.loads((Path(args.out) / "done.json").read_text())
        print(f"rlhf: {args.out} is finished (step {done['step']})")
        return done
    extra, extra_id = (None, None)
    if args.rbrm_weight:
        from .rbrm import RUBRIC
        extra = rbrm_reward(args.rbrm_data, args.out, args.rm)
        extra_id = dict(rbrm_rubric=sha256_file(RUBRIC),
                        rbrm_labels=sha256_file(Path(args.rbrm_data) / "refusal_labels.jsonl"))
    done = train(args.sft, args.rm, args.prompts, args.out, args.steps, args.prompts_per_step, args.max_tokens,
                 args.lr, args.kl_coef, args.epochs, args.minibatch, args.clip, seed=args.seed, extra=extra,
                 extra_weight=args.rbrm_weight, resume=args.resume, temperature=args.temperature, extra_id=extra_id)
    print(json.dumps(done))
    return done
