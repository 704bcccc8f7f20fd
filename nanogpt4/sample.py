"""`nanogpt4 sample`: generate text from a run's latest checkpoint (KV cache, temperature, top-k)."""
import json
from pathlib import Path

import torch

from .model.gpt import GPT, ModelConfig
from .tokenizer import Tokenizer
from .train import checkpoint


def load_run(run, device="cpu"):
    """(model, tokenizer) from a run directory: its config, tokenizer copy and latest verified checkpoint."""
    run = Path(run)
    cfg = json.loads((run / "config.json").read_text())
    ckpt = checkpoint.latest(run / "ckpt")
    if ckpt is None:
        raise FileNotFoundError(f"{run} has no checkpoint")
    model = GPT(ModelConfig(**cfg["model"]))
    checkpoint.load(ckpt, model)
    return model.to(device).eval(), Tokenizer.load(run / "tokenizer.json")


def complete(model, tok, prompt, max_new_tokens=200, temperature=0.8, top_k=50, seed=0, num=1):
    """`num` sampled continuations of `prompt` (strings)."""
    ids = [tok.eot_id] + tok.encode(prompt)
    ids = ids[-(model.cfg.seq_len - 1):]
    idx = torch.tensor([ids] * num)
    g = torch.Generator().manual_seed(seed)
    cols = list(model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, generator=g))
    out = torch.stack(cols, 1).tolist() if cols else [[] for _ in range(num)]
    texts = []
    for row in out:
        if tok.eot_id in row:
            row = row[:row.index(tok.eot_id)]
        texts.append(tok.decode(row))
    return texts


def add_args(p):
    p.add_argument("--run", default="runs/default/pretrain")
    p.add_argument("--prompt", default="The ")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--num", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)


def main(args):
    model, tok = load_run(args.run)
    for i, text in enumerate(complete(model, tok, args.prompt, args.max_new_tokens, args.temperature, args.top_k,
                                      args.seed, args.num)):
        print(f"--- sample {i}\n{args.prompt}{text}")
