"""The GPT decoder: RoPE, parameter-free RMSNorm, grouped-query attention via SDPA with QK-norm, a learned
per-head query gain and smeared keys (see Attention), ReLU² MLP, no biases, an exact-match copy head mixed into
the next-token distribution (see CopyHead), a KV cache with per-row positions for continuous batching (engine.py),
and image embeddings spliced in at image-placeholder tokens.

Parametrisation is maximal-update style (muP, Yang et al. 2022, "Tensor Programs V"): hidden matrices are
initialised with std 1/sqrt(fan_in) and trained with a learning rate scaled by base_width/width (see
`param_groups`), the readout's logits are multiplied by base_width/width and it starts at zero, and the
embedding is initialised at unit scale. The best learning rate then stays put as the width grows;
tests/test_model.py::test_coord_check proves it.
"""
import math
from dataclasses import dataclass, asdict

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelConfig:
    vocab_size: int = 8192
    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 4
    n_kv_head: int = 2
    seq_len: int = 256
    base_width: int = 64  # muP: the width at which the learning rates were tuned
    image_token_id: int = -1  # id of the image placeholder token (-1: no images)
    rope_theta: float = 10000.0
    smear_keys: bool = True  # each key mixes in the previous position's key (see Attention)
    copy_init: bool = True  # the first layer starts as an induction head (see GPT.init_weights)
    copy_head: bool = True  # mix exact-match copying from the context into the output (see CopyHead)

    @property
    def head_dim(self):
        return self.n_embd // self.n_head

    def to_dict(self):
        return asdict(self)

    def validate(self):
        if self.n_embd % self.n_head or self.n_head % self.n_kv_head:
            raise ValueError(f"bad head layout: n_embd={self.n_embd} n_head={self.n_head} n_kv_head={self.n_kv_head}")
        if self.head_dim % 2:
            raise ValueError("head_dim must be even for RoPE")
        return self


def rms_norm(x):
    return F.rms_norm(x, (x.size(-1),))


def rope_tables(seq_len, head_dim, theta, device=None):
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), inv_freq)
    return freqs.cos(), freqs.sin()  # (T, hd/2) each


def apply_rope(x, cos, sin):
    # x: (B, H, T, hd); rotate pairs (first half, second half)
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def explicit_causal_attention(q, k, v):
    """softmax(QKᵀ/√d + causal mask)·V written out. Under torch.compile on CPU, inductor fuses the mask and
    softmax around two bf16 matmuls, which trained ~20% faster than CPU flash-SDPA at 256 context (measured:
    8.9k vs 7.4k tok/s at depth 4); eager and GPU runs keep SDPA."""
    H, KV, T = q.size(1), k.size(1), q.size(2)
    if KV != H:
        k, v = k.repeat_interleave(H // KV, 1), v.repeat_interleave(H // KV, 1)
    scores = (q @ k.transpose(-1, -2)) * q.size(-1) ** -0.5
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    scores = scores.masked_fill(~causal, float("-inf"))
    return torch.softmax(scores.float(), -1).to(q.dtype) @ v


def cached_attention(q, k, v, cache, layer):
    """Attention of T new queries q (B,H,T,hd) per row over that row's cached keys (positions < pos[b]) and the
    new keys k, v (B,KV,T,hd) up to themselves, written out with the query heads of a group stacked against
    their shared key/value head. The cache is only read here (writes happen in `commit`), so a compiled decode
    step has no in-place updates of its inputs. ~10x faster than CPU SDPA with a mask at batch 1."""
    B, H, T, hd = q.shape
    KV, G = k.size(1), H // k.size(1)
    q = q.reshape(B, KV, G * T, hd) * hd ** -0.5
    old = (q @ cache.k[layer].transpose(-1, -2)).float().view(B, KV, G, T, -1)  # (B,KV,G,T,S)
    new = (q @ k.transpose(-1, -2)).float().view(B, KV, G, T, T)
    old = old.masked_fill(~cache.past[:, None, None, None, :], float("-inf"))
    new = new.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=q.device).tril(), float("-inf"))
    p = torch.softmax(torch.cat((old, new), -1), -1).to(v.dtype)
    S = old.size(-1)
    y = p[..., :S].reshape(B, KV, G * T, S) @ cache.v[layer] + p[..., S:].reshape(B, KV, G * T, T) @ v
    return y.view(B, H, T, hd)


class KVCache:
    """Pre-allocated keys and values for `batch_size` rows, each row its own sequence with its own length
    `pos[b]` (rows of a continuous batch join and leave at different times). A forward pass reads the cache and
    stages its new keys and values; `commit` writes them at each row's positions (GPT.forward commits, except
    inside a compiled step, whose caller commits after it). `rows(stop, start)` is a view of rows
    start..stop-1 that shares the storage."""

    def __init__(self, cfg: ModelConfig, batch_size, max_len, dtype=torch.float32, device=None):
        shape = (cfg.n_layer, batch_size, cfg.n_kv_head, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.last_k = torch.zeros(shape[:3] + (1, shape[4]), dtype=dtype, device=device)  # raw key before pos
        self.tokens = torch.zeros(batch_size, max_len, dtype=torch.long, device=device)  # what CopyHead copies
        self.pos = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.max_len = max_len
        self.staged, self.lengths, self.new_tokens = {}, None, None  # lengths: real tokens per row of a right-padded prefill (commit)

    def rows(self, stop, start=0):
        view = object.__new__(KVCache)
        rows = slice(start, stop)
        view.k, view.v, view.last_k, view.pos = self.k[:, rows], self.v[:, rows], self.last_k[:, rows], self.pos[rows]
        view.tokens, view.max_len, view.staged, view.lengths, view.new_tokens = self.tokens[rows], self.max_len, {}, None, None
        return view

    def reset(self, row):
        """Empty one row (a new sequence starts there)."""
        self.pos[row] = 0
        self.last_k[:, row] = 0

    def copy_row(self, src, dst):
        """Row dst becomes a copy of row src."""
        n = int(self.pos[src])
        self.k[:, dst, :, :n] = self.k[:, src, :, :n]
        self.v[:, dst, :, :n] = self.v[:, src, :, :n]
        self.tokens[dst, :n] = self.tokens[src, :n]
        self.last_k[:, dst] = self.last_k[:, src]
        self.pos[dst] = n

    def begin(self, T):
        """Positions (B,T) of T new tokens per row; `past` (B,max_len) marks each row's cached positions."""
        self.past = torch.arange(self.max_len, device=self.pos.device) < self.pos[:, None]
        return self.pos[:, None] + torch.arange(T, device=self.pos.device)

    def stage(self, layer, k, v, raw_k):
        self.staged[layer] = (k, v, raw_k)

    def with_new(self, idx, positions):
        """Each row's tokens so far (B,max_len) with the T new ones idx (B,T) at their positions (B,T); they are
        staged, and written by `commit`, as the keys are."""
        self.new_tokens = idx
        return self.tokens.scatter(1, positions, idx)

    def commit(self):
        """Write the staged keys and values (B,KV,T,hd) of every layer at each row's positions and advance pos by
        T, or by `lengths` (B,) when set (right-padded rows of a batched prefill count only their real tokens)."""
        lengths = self.lengths
        layers = sorted(self.staged)
        k = torch.stack([self.staged[i][0] for i in layers])  # (L,B,KV,T,hd)
        v = torch.stack([self.staged[i][1] for i in layers])
        T = k.size(3)
        at = self.pos[:, None] + torch.arange(T, device=k.device)
        rows = torch.arange(k.size(1), device=k.device)[:, None]
        self.k[:, rows, :, at] = k.permute(1, 3, 0, 2, 4)  # indexed dims first: (B,T,L,KV,hd)
        self.v[:, rows, :, at] = v.permute(1, 3, 0, 2, 4)
        if self.new_tokens is not None:
            self.tokens[rows, at] = self.new_tokens
        raw = torch.stack([self.staged[i][2] for i in layers])  # (L,B,KV,T,hd): the key before smearing
        if lengths is None:
            self.last_k[layers] = raw[:, :, :, -1:]
            self.pos += T
        else:
            self.last_k[layers] = raw[:, rows[:, 0], :, lengths - 1].transpose(0, 1)[..., None, :]
            self.pos += lengths
        self.staged, self.new_tokens = {}, None


class Attention(nn.Module):
    """Causal self-attention. With `smear_keys` each key is a learned per-head mix of its own and the previous
    position's key, k'_t = (1-α)·k_t + α·k_{t-1} (Olsson et al. 2022, "smeared keys"): a head can then match on
    "the token before this one", which is what an induction head (in-context copying) needs, so even a one- or
    two-layer model copies from its context from early in training instead of after a sudden phase change at
    some scale. That keeps held-out code loss (which rewards copying identifiers) smooth along a scaling ladder."""

    def __init__(self, cfg: ModelConfig, layer_idx):
        super().__init__()
        self.cfg, self.layer_idx = cfg, layer_idx
        hd = cfg.head_dim
        self.c_q = nn.Linear(cfg.n_embd, cfg.n_head * hd, bias=False)
        self.c_kv = nn.Linear(cfg.n_embd, 2 * cfg.n_kv_head * hd, bias=False)
        self.c_proj = nn.Linear(cfg.n_head * hd, cfg.n_embd, bias=False)
        self.smear = nn.Parameter(torch.zeros(cfg.n_kv_head)) if cfg.smear_keys else None  # α = sigmoid
        # QK-norm caps a logit at √head_dim (4 for a 16-wide head: too flat to pick one token out of a hundred);
        # a learned per-head gain on the queries lets every head be as sharp as it needs, at every width
        self.q_gain = nn.Parameter(torch.ones(cfg.n_head))

    def smear_keys(self, k, cache):
        """k (B,KV,T,hd) raw keys → smeared keys; the cache remembers the last raw key for the next call."""
        prev = cache.last_k[self.layer_idx].to(k.dtype) if cache is not None else torch.zeros_like(k[:, :, :1])
        shifted = torch.cat((prev, k[:, :, :-1]), 2)
        a = torch.sigmoid(self.smear).to(k.dtype).view(-1, 1, 1)
        return k + a * (shifted - k)

    def forward(self, x, cos, sin, cache=None):
        B, T, _ = x.shape
        H, KV, hd = self.cfg.n_head, self.cfg.n_kv_head, self.cfg.head_dim
        q = self.c_q(x).view(B, T, H, hd).transpose(1, 2)
        k, v = self.c_kv(x).view(B, T, 2, KV, hd).permute(2, 0, 3, 1, 4)
        raw = k
        if self.smear is not None:
            k = self.smear_keys(k, cache)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k = rms_norm(q) * self.q_gain.to(q.dtype).view(-1, 1, 1), rms_norm(k)  # QK-norm: bounded logits
        if cache is not None:  # each row's queries see its own cached keys up to themselves
            y = cached_attention(q, k, v, cache, self.layer_idx)
            cache.stage(self.layer_idx, k, v, raw)
        elif x.device.type == "cpu" and torch.compiler.is_compiling():
            y = explicit_causal_attention(q, k, v)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, enable_gqa=KV != H)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, H * hd))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())  # ReLU² (So et al. 2021, "Primer")


class Block(nn.Module):
    def __init__(self, cfg, layer_idx):
        super().__init__()
        self.attn = Attention(cfg, layer_idx)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache=None):
        x = x + self.attn(rms_norm(x), cos, sin, cache)
        return x + self.mlp(rms_norm(x))


class CopyHead(nn.Module):
    """Exact-match copying from the context, mixed into the next-token distribution (a neural cache / pointer:
    Grave et al. 2017, Merity et al. 2017). At position t two caches point at the earlier positions j < t whose
    token equals the current one (unigram match) and whose previous token matches too (bigram match); each
    cache's distribution puts weight softmax_j(-(t-j)/reach) on the token that followed j. A gate read from the
    final features (readout-like: zero init, muP-scaled) mixes model, unigram and bigram cache:
    p = π₀·softmax(logits) + π₁·c₁ + π₂·c₂, a cache getting no weight where it has no match.

    Why: copying identifiers from the context is much of held-out code's loss, and a Transformer learns it
    (induction heads) only past some size and horizon, inside the scaling ladder's range, which bent the fit runs'
    losses and made the registered prediction miss by ~20% (NOTES.md). With the copy head every model, however
    small, copies from step 0; what the Transformer adds on top grows smoothly. Parameters: 2·width + 4."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.image_token_id = cfg.image_token_id
        self.width_mult = cfg.n_embd / cfg.base_width
        self.gate = nn.Linear(cfg.n_embd, 2, bias=False)
        self.gate_bias = nn.Parameter(torch.zeros(2))
        self.log_reach = nn.Parameter(torch.full((2,), math.log(64.0)))

    def weights(self, seq, pos):
        """seq (B,S) the tokens so far, pos (B,T) the query positions in it. Returns the caches' weights over
        positions w (B,T,2,S), summing to 1 where a cache has a match, has (B,T,2) which do, and nxt (B,S) the
        token after each position (-1 at the end)."""
        S = seq.size(1)
        before = F.pad(seq, (1, 0), value=-1)[:, :-1]
        nxt = F.pad(seq[:, 1:], (0, 1), value=-1)
        j = torch.arange(S, device=seq.device)
        cur = seq.gather(1, pos)
        m1 = (j < pos[..., None]) & (seq[:, None] == cur[..., None])
        if self.image_token_id >= 0:  # an image placeholder is no token to match or copy
            img = self.image_token_id
            m1 = m1 & ((seq != img) & (nxt != img))[:, None] & (cur != img)[..., None]
        m2 = m1 & (before[:, None] == before.gather(1, pos)[..., None])
        m = torch.stack((m1, m2), 2)
        has = m.any(-1)
        score = -(pos[..., None] - j).float()[:, :, None] / self.log_reach.float().exp()[:, None]
        score = score.masked_fill(~m, float("-inf")).masked_fill(~has[..., None], 0.0)  # no NaN rows
        return torch.softmax(score, -1) * has[..., None], has, nxt

    def mix(self, logits, h, w, has, nxt, targets=None):
        """logits (...,V), features h (...,C) and weights, has, nxt of the same positions (see `weights`) → the
        mixture's log-probabilities (...,V), or, given targets (...), those of the targets only (...)."""
        g = (self.gate(h).float() / self.width_mult + self.gate_bias.float()).masked_fill(~has, float("-inf"))
        log_pi = F.log_softmax(torch.cat((torch.zeros_like(g[..., :1]), g), -1), -1)  # (...,3) model, caches
        logp = F.log_softmax(logits.float(), -1)
        if targets is None:
            copied = (log_pi[..., 1:, None].exp() * w).sum(-2)  # (...,S) mixture weight on each position's next
            p = log_pi[..., :1].exp() * logp.exp() + torch.zeros_like(logp).scatter_add_(-1, nxt.clamp_min(0), copied)
            return p.clamp_min(1e-30).log()
        t = targets.clamp_min(0)
        hit = (w * (nxt[..., None, :] == t[..., None, None])).sum(-1)  # (...,2) each cache's p(target)
        log_hit = torch.where(hit > 0, hit.clamp_min(1e-30).log(), float("-inf"))
        return torch.logsumexp(torch.cat((logp.gather(-1, t[..., None]), log_hit), -1) + log_pi, -1)


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg.validate()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.copy = CopyHead(cfg) if cfg.copy_head else None
        self.register_buffer("cos", None, persistent=False)
        self.register_buffer("sin", None, persistent=False)
        self.set_rope()
        self.init_weights()

    def set_rope(self):
        """(Re)build the RoPE tables from cfg.seq_len and cfg.rope_theta: at construction, and when a variant
        changes its context (train/long_context.py)."""
        device = self.wte.weight.device
        self.cos, self.sin = rope_tables(self.cfg.seq_len, self.cfg.head_dim, self.cfg.rope_theta, device)

    @property
    def width_mult(self):
        return self.cfg.n_embd / self.cfg.base_width

    @torch.no_grad()
    def init_weights(self, seed=None):
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        nn.init.normal_(self.wte.weight, std=1.0, generator=g)  # muP input layer: O(1) init
        for block in self.blocks:
            for lin in (block.attn.c_q, block.attn.c_kv, block.mlp.c_fc):
                nn.init.normal_(lin.weight, std=lin.in_features ** -0.5, generator=g)  # hidden: 1/sqrt(fan_in)
            nn.init.zeros_(block.attn.c_proj.weight)  # residual branches start as identity (modded-nanogpt)
            nn.init.zeros_(block.mlp.c_proj.weight)
        nn.init.zeros_(self.lm_head.weight)  # muP readout: zero init
        if self.copy is not None:
            nn.init.zeros_(self.copy.gate.weight)  # readout-like: zero init; model and caches start equal
            self.copy.gate_bias.zero_()
            self.copy.log_reach.fill_(math.log(64.0))
        if self.cfg.copy_init and self.cfg.smear_keys:  # one layer copies only with smeared keys
            self.copy_ready(self.blocks[0].attn)

    @torch.no_grad()
    def copy_ready(self, attn):
        """Start the first layer as an induction head: each key head is a copy of its group's first query head,
        so a query matches the positions holding its own token, and the smeared keys lean on the previous
        position (α = sigmoid(2) = 0.88), so it matches the positions *after* its token's earlier occurrences.
        Attention then already points where a copy of the next token is; what is left to learn is to read out
        the value there. Without it, narrow models at our vocabulary learned to copy only by chance, after
        ~1M tokens or never, and the scaling ladder could not see copying coming (NOTES.md, 2026-12-03)."""
        hd, group = self.cfg.head_dim, self.cfg.n_head // self.cfg.n_kv_head
        for j in range(self.cfg.n_kv_head):
            attn.c_kv.weight[j * hd:(j + 1) * hd] = attn.c_q.weight[j * group * hd:(j * group + 1) * hd]
        if attn.smear is not None:
            attn.smear.fill_(2.0)

    def param_groups(self, lr, weight_decay, embed_mult=1.0, readout_mult=1.0):
        """AdamW groups with muP learning rates: hidden matrices get lr/width_mult; the embedding and the readout
        get width-independent rates lr·embed_mult and lr·readout_mult."""
        gates = [p for b in self.blocks for p in b.parameters() if p.dim() == 1]
        hidden = [p for b in self.blocks for p in b.parameters() if p.dim() > 1]
        readout = [self.lm_head.weight]
        if self.copy is not None:  # the copy gate is read out of the features like the logits
            readout.append(self.copy.gate.weight)
            gates += [self.copy.gate_bias, self.copy.log_reach]
        return [
            dict(params=[self.wte.weight], lr=lr * embed_mult, weight_decay=0.0, name="embedding"),
            dict(params=hidden, lr=lr / self.width_mult, weight_decay=weight_decay, name="hidden"),
            dict(params=readout, lr=lr * readout_mult, weight_decay=weight_decay, name="readout"),
            dict(params=gates, lr=lr * embed_mult, weight_decay=0.0, name="gates"),  # per-head scalars: width-free
        ]

    def readout(self, features, idx, keep=None):
        """Next-token logits from the final features (B,T,C) of the sequences idx (B,T) (forward(...,
        features=True)), or at the positions where keep (B,T) is True only (n,V). With the copy head they are
        the mixture's log-probabilities (softmax leaves them as they are)."""
        return self.head(features, idx, torch.arange(idx.size(1), device=idx.device).expand_as(idx), keep)

    def head(self, x, seq, pos, select=None, targets=None):
        """The output at query positions pos (B,T) of the sequences seq (B,S) from their final features x:
        logits (muP readout multiplier applied), copy head mixed in; `select` (a (B,T) bool mask, or (B,) one
        position per row) reads out there alone; with targets (of the selected positions) their log-probs only."""
        if select is not None and select.dtype == torch.bool:
            pick = lambda t: t[select]  # noqa: E731
        elif select is not None:
            pick = lambda t: t[torch.arange(t.size(0), device=t.device), select]  # noqa: E731
        else:
            pick = lambda t: t  # noqa: E731
        h = pick(x)
        logits = self.lm_head(h) / self.width_mult
        if self.copy is None:
            return logits if targets is None else -F.cross_entropy(
                logits.float().reshape(-1, logits.size(-1)), targets.clamp_min(0).reshape(-1), reduction="none"
            ).view(targets.shape)
        w, has, nxt = self.copy.weights(seq, pos)
        return self.copy.mix(logits, h, pick(w), pick(has), pick(nxt[:, None].expand(-1, pos.size(1), -1)), targets)

    def num_params(self, non_embedding=False):
        n = sum(p.numel() for p in self.parameters())
        return n - self.wte.weight.numel() - self.lm_head.weight.numel() if non_embedding else n

    def embed(self, idx, images=None):
        x = self.wte(idx)
        if images is not None and len(images):
            pos = idx == self.cfg.image_token_id
            n = int(pos.sum())
            if n != images.size(0):
                raise ValueError(f"{images.size(0)} image embeddings for {n} image placeholder tokens")
            x = x.masked_scatter(pos.unsqueeze(-1), images.to(x.dtype))
        return x

    def forward(self, idx, targets=None, images=None, cache=None, loss_mask=None, reduction="mean", logits_at=None,
                features=False):
        """idx (B,T) token ids; images (n_placeholders, n_embd) row-major over placeholder positions; cache: a
        KVCache (or a `rows(...)` view of one) whose rows continue from their own lengths; returns logits (B,T,V),
        or only at position logits_at[b] of each row (B,V), or, with targets, the mean cross-entropy
        (ignore_index -1; with loss_mask, over the positions where it is 1, read out there alone); `features`:
        the final normalised hidden states instead of logits (B,T,C), what the reward model's and the value
        function's scalar heads read."""
        B, T = idx.shape
        if cache is None:
            if T > self.cfg.seq_len:
                raise ValueError(f"sequence of {T} tokens exceeds the context of {self.cfg.seq_len}")
            cos, sin = self.cos[:T], self.sin[:T]
            seq, positions = idx, torch.arange(T, device=idx.device).expand(B, T)
        else:
            positions = cache.begin(T)
            if not torch.compiler.is_compiling() and int(positions[:, -1].max()) >= min(cache.max_len, self.cfg.seq_len):
                raise ValueError(f"sequence of {int(positions[:, -1].max()) + 1} tokens exceeds the context of "
                                 f"{min(cache.max_len, self.cfg.seq_len)}")
            cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]  # (B,1,T,hd/2): per-row positions
            seq = cache.with_new(idx, positions.clamp(max=cache.max_len - 1))  # (a padded prefill may run past)
        x = self.embed(idx, images)
        for block in self.blocks:
            x = block(x, cos, sin, cache)
        if cache is not None and not torch.compiler.is_compiling():
            cache.commit()
        x = rms_norm(x)
        if features:
            return x
        select = logits_at
        if targets is not None and loss_mask is not None:  # the readout only where the loss is taken: an SFT or
            select = loss_mask.bool() & (targets >= 0)  # image answer is a few tokens of a row, the 8,192-way
            targets = targets[select]  # readout at every position was most of a step's work
        out = self.head(x, seq, positions, select, targets)
        if targets is None:
            return out
        nll, valid = -out.reshape(-1), targets.reshape(-1) >= 0  # ignore_index -1, as cross-entropy's
        nll = nll * valid
        if reduction == "none":
            return nll
        return nll.sum() if reduction == "sum" else nll.sum() / valid.sum()
