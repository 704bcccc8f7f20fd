"""Model tests: shapes, KV-cache exactness, image splicing, the size dial, and the muP coordinate check."""
import pytest
import torch

from nanogpt4 import config as C
from nanogpt4.model.gpt import GPT, ModelConfig, KVCache


def tiny(**kw):
    cfg = dict(vocab_size=97, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, seq_len=32, image_token_id=96)
    cfg.update(kw)
    m = GPT(ModelConfig(**cfg))
    m.init_weights(seed=0)
    with torch.no_grad():  # zero-init branches make every position identical; perturb so the test can see mistakes
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.eval()


def test_forward_and_loss():
    m = tiny()
    x = torch.randint(0, 96, (3, 16))
    assert m(x).shape == (3, 16, 97)
    loss = m(x, x)
    assert loss.ndim == 0 and torch.isfinite(loss)
    mask = torch.zeros_like(x)
    mask[:, :4] = 1
    masked = m(x, x, loss_mask=mask)
    assert not torch.isclose(masked, loss)  # the mask changes which tokens count


def test_causality():
    m = tiny()
    x = torch.randint(0, 96, (1, 20))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % 96
    assert torch.allclose(m(x)[0, :10], m(y)[0, :10], atol=1e-6)
    assert not torch.allclose(m(x)[0, 10:], m(y)[0, 10:], atol=1e-3)


def test_kv_cache_matches_full_forward():
    torch.manual_seed(0)
    m = tiny()
    x = torch.randint(0, 96, (2, 24))
    full = m(x)
    cache = KVCache(m.cfg, 2, 24)
    parts = [m(x[:, :10], cache=cache), m(x[:, 10:11], cache=cache), m(x[:, 11:24], cache=cache)]
    assert cache.pos.tolist() == [24, 24]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)


def test_kv_cache_rows_at_different_lengths():
    """Rows of one cache continue from their own lengths (continuous batching): a decode step over rows of
    lengths 5, 5 and 9, and a right-padded prefill of two prompts, both equal the full forward pass."""
    torch.manual_seed(0)
    m = tiny()
    x = torch.randint(0, 96, (2, 24))
    full = m(x)
    cache = KVCache(m.cfg, 3, 32)
    view = cache.rows(2)
    view.lengths = torch.tensor([5, 9])  # row 0's prompt is 5 tokens, row 1's 9 (right-padded to 9)
    pre = m(torch.stack([x[0, :9], x[1, :9]]), cache=view, logits_at=torch.tensor([4, 8]))
    assert torch.allclose(pre[0], full[0, 4], atol=1e-5) and torch.allclose(pre[1], full[1, 8], atol=1e-5)
    cache.copy_row(0, 2)  # a second choice of row 0's prompt
    assert cache.pos.tolist() == [5, 9, 5]
    out = m(torch.stack([x[0, 5:6], x[1, 9:10], x[0, 5:6]]), cache=cache)
    for got, want in zip(out[:, 0], (full[0, 5], full[1, 9], full[0, 5])):
        assert torch.allclose(got, want, atol=1e-5)


def test_image_embeddings_are_spliced_at_placeholders():
    m = tiny()
    img = m.cfg.image_token_id
    x = torch.tensor([[5, img, img, 7, 8], [img, 3, 4, 5, 6]])
    emb = torch.randn(3, m.cfg.n_embd)
    e = m.embed(x, emb)
    assert torch.equal(e[0, 1], emb[0]) and torch.equal(e[0, 2], emb[1]) and torch.equal(e[1, 0], emb[2])
    assert torch.equal(e[0, 0], m.wte.weight[5])
    out_a, out_b = m(x, images=emb), m(x, images=torch.randn(3, m.cfg.n_embd))
    assert not torch.allclose(out_a[0, 3:], out_b[0, 3:])  # later tokens see the image
    assert torch.allclose(out_a[0, 0], out_b[0, 0])  # earlier ones do not
    with pytest.raises(ValueError, match="image embeddings"):
        m(x, images=torch.randn(2, m.cfg.n_embd))


def test_context_overflow_is_a_clear_error():
    m = tiny()
    with pytest.raises(ValueError, match="exceeds the context"):
        m(torch.zeros(1, 33, dtype=torch.long))


def test_size_dial_derivation():
    prev = None
    for depth in (1, 2, 4, 6, 8):
        tc = C.TrainConfig(depth=depth)
        mc = tc.model_config()
        assert mc.n_embd == 64 * depth and mc.head_dim == 64 and mc.n_head % mc.n_kv_head == 0
        m = GPT(mc)
        d = C.derive(tc)
        assert d["params"] == m.num_params()
        # the one FLOPs count, from the config alone, is the built model's: 6·N without the lookup + attention
        assert C.flops_per_token(mc) == 6 * (m.num_params() - m.wte.weight.numel()) + 12 * depth * mc.seq_len * mc.n_embd
        assert C.flops_per_token(mc, non_embedding=True) == 6 * m.num_params(non_embedding=True)
        assert C.train_flops(tc) == C.flops_per_token(mc) * d["tokens"]
        assert abs(d["tokens"] - 20 * d["params"]) / (20 * d["params"]) < 0.05
        assert d["batch_seqs"] * tc.seq_len * d["steps"] == d["tokens"]
        if prev:
            assert d["params"] > prev["params"] and d["batch_seqs"] >= prev["batch_seqs"]
        prev = d
    d = C.derive(C.TrainConfig(depth=2))
    assert C.lr_factor(0, d) == pytest.approx(1 / d["warmup_steps"])
    assert C.lr_factor(d["steps"] // 2, d) == 1.0
    assert C.lr_factor(d["steps"] - 1, d) == pytest.approx(1 / d["cooldown_steps"])


def coord_check(mup, widths=(64, 128, 256, 512), steps=4, lr=C.BASE_LR):
    """Mean |activation| of the residual stream and the logits after a few Adam steps, per width."""
    out = {}
    for w in widths:
        torch.manual_seed(0)
        cfg = ModelConfig(vocab_size=128, n_layer=2, n_embd=w, n_head=w // 32, n_kv_head=w // 64, seq_len=32,
                          base_width=64 if mup else w)
        m = GPT(cfg)
        m.init_weights(seed=0)
        opt = torch.optim.Adam(m.param_groups(lr, 0.0, C.EMBED_LR_MULT, C.READOUT_LR_MULT))
        g = torch.Generator().manual_seed(0)
        data = torch.randint(0, 128, (8, 33), generator=g)
        for _ in range(steps):
            loss = m(data[:, :-1], data[:, 1:])
            loss.backward()
            opt.step()
            opt.zero_grad()
        acts = {}
        hooks = [b.register_forward_hook(lambda mod, i, o, k=k: acts.__setitem__(f"block{k}", o.abs().mean().item()))
                 for k, b in enumerate(m.blocks)]
        with torch.no_grad():
            acts["logits"] = m(data[:, :-1]).abs().mean().item()
        for h in hooks:
            h.remove()
        out[w] = acts
    return out


def growth(res):
    """Largest factor (up or down), over activations, between the widest and the narrowest model."""
    ws = sorted(res)
    return max(max(r, 1 / r) for r in (res[ws[-1]][k] / res[ws[0]][k] for k in res[ws[0]]))


def test_coord_check_mup_is_flat_and_standard_param_is_not():
    mup, sp = coord_check(True), coord_check(False)
    assert growth(mup) < 2.5, mup  # 8x the width: every activation within 2.5x (measured: 1.8x, logits)
    assert growth(sp) > 5.0, sp  # measured: ~8x  # the same model without muP scaling blows up: the check can fail


def test_explicit_attention_matches_sdpa():
    from nanogpt4.model.gpt import explicit_causal_attention
    q, k, v = torch.randn(2, 4, 16, 8), torch.randn(2, 2, 16, 8), torch.randn(2, 2, 16, 8)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert torch.allclose(explicit_causal_attention(q, k, v), ref, atol=1e-5)


def copy_task_loss(smear_keys=True, copy_init=False, vocab=32, width=64, seq=32, batch_rows=64, steps=300, seed=0,
                   copy_head=False):
    """Loss on the predictable half of 'random segment, then the same segment again' after training a one-layer
    model. The segment length varies per sequence, so no fixed positional offset solves it: only an induction
    head (attend to the token after the previous occurrence of the current token) does, or the copy head."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    m = GPT(ModelConfig(vocab_size=vocab, n_layer=1, n_embd=width, n_head=1, n_kv_head=1, seq_len=seq,
                        smear_keys=smear_keys, copy_init=copy_init, copy_head=copy_head))
    m.init_weights(seed=seed)
    opt = torch.optim.Adam(m.param_groups(3e-3, 0.0, C.EMBED_LR_MULT, C.READOUT_LR_MULT))

    def batch(n=batch_rows):
        x = torch.randint(0, vocab, (n, seq + 1), generator=g)
        mask = torch.zeros(n, seq, dtype=torch.long)
        for i, L in enumerate(torch.randint(seq // 5, seq // 2, (n,), generator=g).tolist()):
            x[i, L:2 * L] = x[i, :L]
            mask[i, L:2 * L - 1] = 1  # inputs L..2L-2 predict tokens L+1..2L-1, copies of earlier tokens
        return x[:, :-1], x[:, 1:], mask

    for _ in range(steps):
        x, y, mask = batch()
        m(x, y, loss_mask=mask).backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        x, y, mask = batch(256)
        return m(x, y, loss_mask=mask).item()


def test_smeared_keys_let_one_layer_copy():
    """Olsson et al. 2022: a one-layer model cannot form an induction head; with smeared keys it can."""
    with_smear, without = copy_task_loss(smear_keys=True), copy_task_loss(smear_keys=False)
    assert with_smear < 0.5, with_smear  # copies (chance is ln 32 = 3.47)
    assert without > 1.5, without  # cannot: at best it spreads attention over the 9 possible offsets (ln 9 = 2.2)


def test_copy_ready_init_lets_a_narrow_model_copy_from_the_start():
    """With 1,024 tokens in a 16-wide model, a one-layer model with smeared keys has not learned to copy after 100
    steps from the usual initialisation (loss at chance, ln 1024 = 6.9); started as an induction head (keys =
    queries, smeared towards the previous position: GPT.copy_ready) it copies within them."""
    kw = dict(vocab=1024, width=16, seq=64, batch_rows=32, steps=100)
    ready, usual = copy_task_loss(copy_init=True, **kw), copy_task_loss(copy_init=False, **kw)
    assert ready < 1.5, ready
    assert usual > 5.0, usual


def test_copy_head_copies_without_any_attention_learned():
    """The copy head needs no induction head: with neither smeared keys nor the copy-ready start, a narrow model
    copies after 30 steps with it (bigram matches point at the right token) and stays at chance without it."""
    kw = dict(vocab=1024, width=16, seq=64, batch_rows=32, steps=30, smear_keys=False)
    head, none = copy_task_loss(copy_head=True, **kw), copy_task_loss(copy_head=False, **kw)
    assert head < 1.0, head
    assert none > 5.0, none


def test_copy_head_output_is_a_distribution_and_every_readout_path_agrees():
    """Log-probabilities (logsumexp 0); the loss with targets, a masked loss, logits_at and readout(features)
    all read the same mixture; the copy head puts mass on the token that followed an earlier match."""
    torch.manual_seed(0)
    m = GPT(ModelConfig(vocab_size=50, n_layer=1, n_embd=32, n_head=2, n_kv_head=1, seq_len=16))
    with torch.no_grad():
        m.lm_head.weight.normal_()
    x = torch.stack([torch.randperm(50)[:12] for _ in range(3)])  # distinct tokens, then one repeat
    x[:, 6:9] = x[:, 2:5]
    y = torch.randint(0, 50, (3, 12))
    logp = m(x).float()
    assert torch.allclose(logp.logsumexp(-1), torch.zeros(3, 12), atol=1e-5)
    nll = -logp.gather(-1, y[..., None])[..., 0]
    assert torch.allclose(m(x, y), nll.mean(), atol=1e-5)
    mask = (torch.rand(3, 12) < 0.5).long()
    assert torch.allclose(m(x, y, loss_mask=mask), nll[mask.bool()].mean(), atol=1e-5)
    at = torch.tensor([3, 7, 11])
    assert torch.allclose(m(x, logits_at=at), logp[torch.arange(3), at], atol=1e-5)
    assert torch.allclose(m.readout(m(x, features=True), x), logp, atol=1e-5)
    # position 7 holds x[3], followed by x[4] at its only earlier occurrence, where the bigram x[2] x[3] matches
    # too: both caches (2/3 of the mass at the zero-initialised gate) point at x[4]
    assert (logp[torch.arange(3), 7, x[:, 4]].exp() > 2 / 3 - 1e-4).all()
    no_match = logp[:, 1]  # position 1: nothing earlier matches, the model's own distribution
    assert torch.allclose(no_match, (m.lm_head(m(x, features=True)[:, 1]) / m.width_mult).float().log_softmax(-1),
                          atol=1e-5)
