"""Likelihood ranking: score each candidate answer of a prompt by the summed log-probability the model gives its
tokens, and pick the best (the multiple-choice protocol of GPT-3 and of the Inverse Scaling Prize evaluations).

The prompt and each option are tokenised separately and joined, `<|endoftext|>` + prompt + option (the prompt
rule of every base-model caller, `engine.prompt_ids`), so every option is scored after exactly the same context
tokens. A sequence longer than the model's context loses tokens from the left of the prompt; the option is never
cut.
Rows are right-padded and batched (causal attention makes right padding invisible to the real positions), rows
with identical inputs (single-token options after one prompt) share a forward pass, and the
log-softmax is taken in float32 whatever the model's dtype.
"""
import torch

from .engine import prompt_ids

__all__ = ["encode_pair", "option_logprobs", "batch_option_logprobs"]


def encode_pair(tok, prompt, option, seq_len, bos=True):
    """(context ids, option ids) for scoring `option` after `prompt`, the context left-truncated so that the model
    input (context + option minus its last token) fits in `seq_len`. The context keeps at least one token."""
    opt = tok.encode(option)
    if not opt:
        raise ValueError(f"option {option!r} encodes to no tokens")
    if len(opt) > seq_len:
        raise ValueError(f"option of {len(opt)} tokens does not fit a context of {seq_len}")
    keep = seq_len + 1 - len(opt)
    ctx = prompt_ids(tok, prompt, keep)[0] if bos else tok.encode(prompt)[-keep:]
    if not ctx:
        raise ValueError("empty context: pass bos=True or a non-empty prompt")
    return ctx, opt


@torch.no_grad()
def batch_option_logprobs(model, tok, items, batch_size=16, bos=True):
    """items: iterable of (prompt, options). Returns, per item, the summed log-probability of each option's tokens
    given its prompt (list of floats, in the order of the options)."""
    items = [(p, list(opts)) for p, opts in items]
    seq_len = model.cfg.seq_len
    device = next(model.parameters()).device
    rows = []  # (item index, option index, input ids, first option position, option ids)
    for i, (prompt, options) in enumerate(items):
        for j, option in enumerate(options):
            ctx, opt = encode_pair(tok, prompt, option, seq_len, bos)
            rows.append((i, j, (ctx + opt)[:-1], len(ctx) - 1, opt))
    out = [[0.0] * len(opts) for _, opts in items]
    # rows with the same input (e.g. single-token options after one prompt) share one forward pass
    inputs = sorted({tuple(r[2]) for r in rows}, key=lambda ids: (-len(ids), ids))  # similar lengths batch
    by_input = {}
    for r in rows:
        by_input.setdefault(tuple(r[2]), []).append(r)
    for b in range(0, len(inputs), batch_size):
        chunk = inputs[b:b + batch_size]
        idx = torch.zeros(len(chunk), len(chunk[0]), dtype=torch.long)
        for k, ids in enumerate(chunk):
            idx[k, :len(ids)] = torch.tensor(ids)
        logits = model(idx.to(device))
        for k, ids in enumerate(chunk):
            for i, j, _, start, opt in by_input[ids]:
                lp = torch.log_softmax(logits[k, start:start + len(opt)].float(), dim=-1)
                out[i][j] = lp.gather(-1, torch.tensor(opt, device=lp.device)[:, None]).sum().item()
    return out


def option_logprobs(model, tok, prompt, options, batch_size=16, bos=True):
    """Summed log-probability of each option's tokens given `prompt` (list of floats, one per option)."""
    return batch_option_logprobs(model, tok, [(prompt, options)], batch_size, bos)[0]
