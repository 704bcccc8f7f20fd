"""Shared fixtures: a tiny generated corpus, tokenizer and token shards, built once per test session."""
import json
import random

import pytest


def generated_text(n_docs, seed=0):
    """Documents of simple, learnable English-like sentences (a small grammar), and a little Python."""
    rng = random.Random(seed)
    subj = ["the cat", "a dog", "the old man", "my sister", "the king", "a small bird", "the river", "our teacher"]
    verb = ["sees", "likes", "follows", "finds", "carries", "remembers", "calls", "watches"]
    obj = ["the ball", "a red house", "the moon", "an apple", "the long road", "a quiet song", "the sea", "bread"]
    docs = []
    for i in range(n_docs):
        if i % 5 == 4:
            name = rng.choice(["add", "scale", "merge", "count"])
            docs.append({"kind": "code", "text": f"def {name}_{i}(x, y):\n    \"\"\"Return the {name} of x and y.\"\"\"\n"
                                                 f"    return x + y * {rng.randint(1, 9)}\n\n" * 3})
        else:
            sents = [f"{rng.choice(subj).capitalize()} {rng.choice(verb)} {rng.choice(obj)}." for _ in range(12)]
            docs.append({"kind": "text", "text": " ".join(sents)})
    return docs


@pytest.fixture(scope="session")
def tiny_tokens(tmp_path_factory):
    """A work dir with corpus/, tokenizer/tokenizer.json and tokenizer/tokens/ (train, val_*, heldout_code)."""
    from nanogpt4.data import shards
    from nanogpt4.tokenizer import Tokenizer
    root = tmp_path_factory.mktemp("work")
    corpus = root / "corpus"
    corpus.mkdir()
    docs = generated_text(400)
    splits = {"train.jsonl": docs[:360], "val.jsonl": docs[360:390],
              "heldout_code.jsonl": [d for d in generated_text(60, seed=9) if d["kind"] == "code"]}
    for name, rows in splits.items():
        with open(corpus / name, "w") as f:
            for i, d in enumerate(rows):
                f.write(json.dumps({"id": f"gen/{name}/{i}", "source": "gen", **d}) + "\n")
    (corpus / "manifest.json").write_text(json.dumps({"generated": True}))
    tok = Tokenizer.train((d["text"] for d in splits["train.jsonl"]), vocab_size=512)
    tok.save(root / "tokenizer" / "tokenizer.json")
    shards.build(corpus, tok, root / "tokenizer" / "tokens")
    return root


@pytest.fixture(scope="session")
def local_run(tiny_tokens, tmp_path_factory):
    """A run directory with a small random GPT and the tiny corpus' tokenizer (what `nanogpt4 pretrain` leaves)."""
    from nanogpt4.tokenizer import Tokenizer
    tok = Tokenizer.load(tiny_tokens / "tokenizer" / "tokenizer.json")
    return random_run(tmp_path_factory.mktemp("run"), tok, seq_len=64)


def random_run(run, tok, seq_len, edit=None):
    """A run directory holding a tiny random GPT (2 layers, width 32) on `tok`; `edit(model)` may change its weights
    before it is saved."""
    import torch
    from nanogpt4.model.gpt import GPT, ModelConfig
    from nanogpt4 import checkpoint
    cfg = ModelConfig(vocab_size=tok.vocab_size, n_layer=2, n_embd=32, n_head=2, n_kv_head=1, seq_len=seq_len)
    m = GPT(cfg)
    m.init_weights(seed=0)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
        if edit is not None:
            edit(m)
    checkpoint.save(run / "ckpt", m, None, {"step": 0})
    tok.save(run / "tokenizer.json")
    (run / "config.json").write_text(json.dumps(dict(model=cfg.to_dict())))
    return run


@pytest.fixture(scope="session")
def endless_run(local_run, tmp_path_factory):
    """A tiny random GPT on local_run's tokenizer, with a 2,048-token context, that never samples a stop token: a
    constant feature in the residual stream's first dimension (the blocks never write to it) gives the stop tokens
    a hugely negative logit at every position."""
    from nanogpt4.tokenizer import Tokenizer
    tok = Tokenizer.load(local_run / "tokenizer.json")

    def never_stop(m):
        m.wte.weight[:, 0] = 1.0
        for block in m.blocks:
            block.attn.c_proj.weight[0] = 0
            block.mlp.c_proj.weight[0] = 0
        m.lm_head.weight[:, 0] = 0
        m.lm_head.weight[[tok.eot_id, tok.special("end")], 0] = -1000.0
    return random_run(tmp_path_factory.mktemp("endless"), tok, seq_len=2048, edit=never_stop)


@pytest.fixture(scope="session")
def vision_run(local_run, tmp_path_factory):
    """A tiny random vision run on local_run's tokenizer: the decoder with its image token in ckpt/, a random
    encoder (model/vision.py) at the same step in vision/, as `nanogpt4 vision` leaves them."""
    import torch
    from nanogpt4 import checkpoint
    from nanogpt4.model.gpt import GPT, ModelConfig
    from nanogpt4.model.vision import VisionConfig, VisionEncoder
    from nanogpt4.tokenizer import Tokenizer
    tok = Tokenizer.load(local_run / "tokenizer.json")
    cfg = json.loads((local_run / "config.json").read_text())["model"]
    cfg = ModelConfig(**dict(cfg, image_token_id=tok.special("image"), seq_len=128))
    torch.manual_seed(0)
    decoder, encoder = GPT(cfg), VisionEncoder(VisionConfig.for_decoder(cfg))
    decoder.init_weights(seed=0)
    with torch.no_grad():
        for p in decoder.parameters():
            p.add_(torch.randn(p.shape) * 0.3)
    run = tmp_path_factory.mktemp("vision")
    checkpoint.save(run / "ckpt", decoder, None, {"step": 0})
    checkpoint.save(run / "vision", encoder, None, {"step": 0})
    tok.save(run / "tokenizer.json")
    (run / "config.json").write_text(json.dumps(dict(model=cfg.to_dict(), encoder=encoder.cfg.to_dict())))
    return run
