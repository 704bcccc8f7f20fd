"""`nanogpt4 sample`: generate text from a run's newest checkpoint through the engine (engine.py), the same path
the evals, the scaling samplers and the server use."""
from . import runs
from .common import UserError
from .engine import Engine, SamplingParams, prompt_ids


def complete(engine, prompt, max_new_tokens=200, temperature=0.8, top_k=50, top_p=1.0, seed=0, num=1):
    """`num` sampled continuations of `prompt` (strings) and how many prompt tokens were cut from its left to
    leave room for them."""
    ids, cut = prompt_ids(engine.tok, prompt, engine.n_ctx - max_new_tokens)
    params = SamplingParams(max_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                            n=num)
    return [c.text for c in engine.generate([ids], params)[0].choices], cut


def add_args(p):
    p.add_argument("--run", default="runs/default/pretrain", help="run directory (its newest verified checkpoint)")
    p.add_argument("--prompt", default="The ", help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate per sample")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (0: greedy)")
    p.add_argument("--top-k", type=int, default=50, help="sample among the k most likely tokens (0: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: the smallest set with this mass")
    p.add_argument("--num", type=int, default=3, help="number of samples")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (same seed, same samples)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, … (default: cuda when present)")


def main(args):
    run = runs.load(args.run, args.device)
    engine = Engine(run.model, run.tok)
    if args.max_new_tokens >= engine.n_ctx:
        raise UserError(f"--max-new-tokens {args.max_new_tokens} leaves no room for a prompt in the model's "
                         f"{engine.n_ctx}-token context")
    texts, cut = complete(engine, args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                          args.seed, args.num)
    if cut:
        print(f"(the prompt lost its first {cut} tokens to fit the {engine.n_ctx}-token context)")
    for i, text in enumerate(texts):
        print(f"--- sample {i}\n{args.prompt}{text}")
