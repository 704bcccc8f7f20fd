"""The vision path on tiny models: image loading refuses bad input with a clear error, the encoder's token count is
known before the forward pass, the engine splices image embeddings in, and the vision stage teaches a tiny chat
model to read a property only the image shows (far above its own text-only answers), resuming exactly."""
import base64
import io
import json
import random
import shutil

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from nanogpt4 import chat, runs
from nanogpt4.common import UserError
from nanogpt4.engine import Engine, SamplingParams
from nanogpt4.model.gpt import GPT, ModelConfig
from nanogpt4.model.vision import ImageError, VisionConfig, VisionEncoder, letterbox, load_image, normalise, see

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}


def png(img, fmt="PNG"):
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def data_url(img):
    return "data:image/png;base64," + base64.b64encode(png(img)).decode()


def disc(colour, rng):
    img = Image.new("RGB", (64, 64), (235, 235, 235))
    x, y = rng.randint(4, 36), rng.randint(4, 36)
    ImageDraw.Draw(img).ellipse([x, y, x + 24, y + 24], fill=COLOURS[colour])
    return img


def write_set(root, n_train=160, n_held=40):
    """Red or blue discs ("colour?"), as `nanogpt4 vision-data` writes its sets: train/held-out JSONL and the
    held-out rows as an evals registry."""
    from nanogpt4.data.images import write_registry
    root.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("heldout", n_held, 1)):
        rng = random.Random(seed)
        rows = []
        for i in range(n):
            c = rng.choice(sorted(COLOURS))
            content = [{"type": "image_url", "image_url": {"url": data_url(disc(c, rng))}},
                       {"type": "text", "text": "colour?"}]
            rows.append(dict(id=f"colour/{split}/{i}", task="colour", split=split, answer=c, choices=sorted(COLOURS),
                             messages=[{"role": "user", "content": content}]))
        if split == "train":  # conversations in SFT's format train too: a system message, two turns, two images
            for i in range(8):
                a, b = rng.choice(sorted(COLOURS)), rng.choice(sorted(COLOURS))
                msgs = [{"role": "system", "content": "Answer with a colour."},
                        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(disc(a, rng))}},
                                                     {"type": "text", "text": "colour?"}]},
                        {"role": "assistant", "content": a},
                        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(disc(b, rng))}},
                                                     {"type": "text", "text": "and this?"}]},
                        {"role": "assistant", "content": b}]
                rows.append(dict(id=f"chat/{i}", split="train", messages=msgs))
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_registry(root / "registry", rows)
    return root


def test_load_image_refuses_bad_input_clearly():
    ok = Image.new("RGB", (10, 20), (1, 2, 3))
    assert load_image(data_url(ok)).size == (10, 20)
    assert load_image(png(ok, "JPEG")).mode == "RGB"
    cases = {
        "https://example.com/cat.png": "no network",
        "data:image/png;base64,@@@notbase64": "malformed",
        "data:text/plain;base64,aGVsbG8=": "unsupported data URL",
        b"hello, not an image": "not an image",
        png(ok)[:60]: "truncated or corrupt",
        png(Image.new("1", (5000, 5000))): "exceeds the limit",  # a bomb: tiny file, 25M pixels
        b"\0" * (6 * 2 ** 20): "larger than",
        png(ok, "TIFF"): "not an image",
    }
    for source, why in cases.items():
        with pytest.raises(ImageError, match=why):
            load_image(source)


def test_encoder_token_count_is_known_and_letterbox_keeps_aspect():
    cfg = VisionConfig.for_decoder(ModelConfig(n_embd=256, n_layer=4))
    assert (cfg.width, cfg.depth, cfg.tokens, cfg.out_dim) == (128, 2, 16, 256)
    enc = VisionEncoder(cfg)
    views = torch.cat([see(cfg, Image.new("RGB", (64, 64)))[1], see(cfg, Image.new("RGB", (200, 50)), "low")[1]])
    assert enc(normalise(views)).shape == (2, cfg.tokens, 256)
    box = letterbox(Image.new("RGB", (64, 32), (255, 0, 0)), 64)  # wide image: grey bands above and below
    assert box.shape == (3, 64, 64) and box[:, 0, 0].tolist() == [128, 128, 128]
    assert box[:, 32, 32].tolist() == [255, 0, 0]


def test_large_images_are_tiled_with_row_and_column_markers(local_run):
    cfg = VisionConfig()  # 64-pixel views of 16 tokens, at most 2 × 2 tiles
    img = Image.new("RGB", (128, 128), (128, 128, 128))
    quads = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    for i, rgb in enumerate(quads):  # a distinct colour in each quarter
        img.paste(Image.new("RGB", (64, 64), rgb), (64 * (i % 2), 64 * (i // 2)))
    layout, views = see(cfg, img)
    assert layout == ["row 1, column 1:", 16, "row 1, column 2:", 16, "row 2, column 1:", 16, "row 2, column 2:", 16]
    assert views.shape == (4, 3, 64, 64) and views.dtype == torch.uint8
    assert [views[i, :, 32, 32].tolist() for i in range(4)] == [list(q) for q in quads]  # tiles in reading order
    low = see(cfg, img, "low")
    assert low[0] == [16] and len(low[1]) == 1 and low[1][0, :, 16, 16].tolist() == list(quads[0])  # shrunk whole
    assert see(cfg, Image.new("RGB", (127, 90)))[0] == [16]  # "auto": tiles only from twice the view's side
    assert cfg.tiles(127, 90, "high") == (2, 2) and cfg.tiles(300, 64, "high") == (1, 2)
    assert cfg.layout(1, 2) == ["row 1, column 1:", 16, "row 1, column 2:", 16]
    assert cfg.tiles(4000, 3000, "high") == (2, 2) and cfg.tiles(40, 30, "high") == (1, 1)
    with pytest.raises(ImageError, match="detail must be"):
        cfg.tiles(64, 64, "medium")
    # the chat rendering: the markers are plain text, the placeholders as many as the layout's runs
    tok = runs.load(local_run, device="cpu").tok
    buf = io.BytesIO()
    img.save(buf, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]
    from nanogpt4.model import vision as V
    r, seen = V.render(tok, msgs, cfg)
    assert r.ids.count(tok.special("image")) == 64 and len(seen) == 1 and seen[0].shape[0] == 4
    assert tok.decode([i for i in r.ids if i != tok.special("image")]).count("row 2, column 1:") == 1
    low = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url, "detail": "low"}}]}]
    assert V.render(tok, low, cfg)[0].ids.count(tok.special("image")) == 16
    with pytest.raises(chat.ChatError, match="detail"):
        chat.render(tok, [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url,
                                                                                            "detail": "max"}}]}])
    with pytest.raises(ImageError, match="image 2: .*no network"):
        V.render(tok, [{"role": "user", "content": msgs[0]["content"] + [
            {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}], cfg)


def test_engine_splices_image_embeddings(local_run):
    run = runs.load(local_run, device="cpu")
    tok = run.tok
    cfg = ModelConfig(**{**run.model.cfg.to_dict(), "image_token_id": tok.special("image")})
    model = GPT(cfg)
    model.load_state_dict(run.model.state_dict())
    model.eval()
    msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}},
                                         {"type": "text", "text": "what?"}]}]
    ids = chat.render(tok, msgs, image=4).ids
    engine = Engine(model, tok, max_rows=4)
    params = SamplingParams(max_tokens=6, temperature=0.0, logprobs=0)
    a, b = torch.randn(4, cfg.n_embd) * 3, torch.randn(4, cfg.n_embd) * 3
    outs = engine.generate([ids, ids, ids], params, images=[a, b, a])
    assert outs[0].choices[0].token_ids == outs[2].choices[0].token_ids  # same image, same greedy answer
    with torch.no_grad():  # the engine's first-token distribution is the model's own with those embeddings
        direct = model(torch.tensor([ids]), images=b)[0, -1].float().log_softmax(-1)
    first = outs[1].choices[0].token_ids[0]
    assert first == int(direct.argmax())
    with pytest.raises(ValueError, match="image embeddings for 4 image placeholder"):
        engine.submit(ids, params, images=torch.randn(3, cfg.n_embd))
    with pytest.raises(ValueError, match="0 image embeddings for 4"):
        engine.submit(ids, params)


def test_vision_stage_learns_what_only_the_image_shows_and_resumes(local_run, tmp_path):
    from nanogpt4.train import vision
    from tests.test_posttrain import conversations
    data = write_set(tmp_path / "data")
    text = conversations(tmp_path / "text.jsonl")
    kw = dict(batch_size=16, lr=3e-3, decoder_lr=3e-3, text_share=0.25, eval_every=30, dtype="float32", quiet=True)
    done = vision.train(local_run, data, text, tmp_path / "v", align_steps=30, joint_steps=90, **kw)
    t = done["tasks"]["colour"]
    assert t["with_image"]["n"] == 40 and t["chance"] == 0.5
    assert t["with_image"]["accuracy"] >= 0.9, t  # only the image says which colour
    assert t["with_image"]["accuracy"] - max(t["text_only"]["accuracy"], t["majority"]["accuracy"]) >= 0.3, t
    assert done["text_heldout_loss_after"] > 0 and "text_loss_change" in done
    r = runs.load(tmp_path / "v", device="cpu")  # what the server loads: decoder + encoder at the same step
    assert r.vision is not None and r.model.cfg.image_token_id == r.tok.special("image")
    # a run killed after its step-90 checkpoint (in the joint phase) resumes to the same step-120 weights
    again = tmp_path / "again"
    shutil.copytree(tmp_path / "v", again)
    for root in ("ckpt", "vision"):
        shutil.rmtree(again / root / "step_0000120")
    (again / "done.json").unlink()
    resumed = vision.train(local_run, data, text, again, align_steps=30, joint_steps=90, resume=True, **kw)
    for root in ("ckpt", "vision"):
        a, b = (load_file(d / root / "step_0000120" / "model.safetensors") for d in (tmp_path / "v", again))
        assert all((a[k] == b[k]).all() for k in a), root
    assert resumed["tasks"]["colour"]["with_image"] == t["with_image"]
    with pytest.raises(UserError, match="another base, data or settings"):
        vision.train(local_run, data, text, again, align_steps=30, joint_steps=60, resume=True, **kw)


def perturbed_gpt(n_layer, seq_len):
    """A tiny GPT (vocabulary 256, width 32) with its initial weights perturbed, so no output is trivially uniform."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=256, n_layer=n_layer, n_embd=32, n_head=2, n_kv_head=1, seq_len=seq_len))
    model.init_weights(seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def test_masked_loss_reads_out_only_where_the_mask_is_and_matches_the_full_readout():
    """GPT.forward with a loss_mask computes logits at the masked positions alone (what SFT and the vision stage
    train on): the same loss and gradients as the cross-entropy of the full logits there; padding (-1) is skipped."""
    torch.manual_seed(0)
    m = GPT(ModelConfig(vocab_size=512, n_layer=2, n_embd=64, n_head=2, n_kv_head=1, seq_len=32))
    m.init_weights(seed=0)
    with torch.no_grad():
        for p in m.parameters():  # zero-initialised readout and projections would make every loss log(512)
            p.add_(torch.randn_like(p) * 0.05)
    x, y = torch.randint(0, 512, (3, 20)), torch.randint(0, 512, (3, 20))
    y[2, 15:] = -1  # padding
    mask = (torch.rand(3, 20) > 0.6).long()
    keep = mask.bool() & (y >= 0)
    full = m(x)
    want = torch.nn.functional.cross_entropy(full[keep].float(), y[keep])
    assert 0.5 < want.item() / 6.238 < 1.5 and abs(want.item() - 6.238) > 1e-3  # not the uniform log(512)
    got = m(x, y, loss_mask=mask)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    total = m(x, y, loss_mask=mask, reduction="sum").item()
    assert total == pytest.approx(want.item() * int(keep.sum()), rel=1e-5)
    g_want = torch.autograd.grad(want, m.lm_head.weight)[0]
    g_got = torch.autograd.grad(m(x, y, loss_mask=mask), m.lm_head.weight)[0]
    assert torch.allclose(g_got, g_want, atol=1e-6)



def test_text_anchor_is_the_kl_at_masked_positions_and_pulls_back():
    """The joint phase's text term: KL(anchor ‖ model) over the masked positions only — zero for the anchor itself,
    blind to unmasked positions, and a step down its gradient moves a drifted model back toward the anchor."""
    from nanogpt4.posttrain import trainer
    from nanogpt4.train.vision import kl_to
    anchor = perturbed_gpt(n_layer=1, seq_len=16)
    model = trainer.frozen(anchor).train().requires_grad_(True)
    x, mask = torch.randint(0, 256, (2, 12)), torch.zeros(2, 12, dtype=torch.long)
    mask[:, 6:] = 1
    assert kl_to(anchor, model, x, mask).item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    kl = kl_to(anchor, model, x, mask)
    p_a = torch.softmax(anchor(x)[mask.bool()], -1)  # the definition, written out
    want = (p_a * (p_a.log() - torch.log_softmax(model(x)[mask.bool()], -1))).sum(-1).mean()
    assert kl.item() > 1e-3 and kl.item() == pytest.approx(want.item(), rel=1e-4)
    # a causal model: positions after the last masked one cannot matter, the masked ones do
    y = x.clone()
    y[:, 11] = (y[:, 11] + 1) % 256
    assert kl_to(anchor, model, y, mask * (torch.arange(12) < 11)).item() == pytest.approx(
        kl_to(anchor, model, x, mask * (torch.arange(12) < 11)).item(), rel=1e-6)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(10):
        opt.zero_grad()
        kl_to(anchor, model, x, mask).backward()
        opt.step()
    assert kl_to(anchor, model, x, mask).item() < 0.5 * kl.item()


def test_registry_image_paths_are_inlined_as_data_urls(tmp_path):
    from nanogpt4.evals.completion import inline
    Image.new("RGB", (20, 10), (0, 200, 0)).save(tmp_path / "g.png")
    Image.new("RGB", (20, 10), (0, 0, 200)).save(tmp_path / "b.jpg")
    prompt = [{"role": "system", "content": "Answer."},
              {"role": "user", "content": [{"type": "image_url", "image_url": {"url": str(tmp_path / "g.png")}},
                                           {"type": "image_url", "image_url": {"url": f"file://{tmp_path}/b.jpg",
                                                                               "detail": "low"}},
                                           {"type": "text", "text": "Colours?"}]}]
    out = inline(prompt)
    g, b, q = out[1]["content"]
    assert g["image_url"]["url"].startswith("data:image/png;base64,") and load_image(g["image_url"]["url"]).size == (20, 10)
    assert b["image_url"]["url"].startswith("data:image/jpeg;base64,") and b["image_url"]["detail"] == "low"
    assert load_image(b["image_url"]["url"]).getpixel((10, 5))[2] > 150
    assert q == prompt[1]["content"][2] and out[0] == prompt[0]
    assert prompt[1]["content"][0]["image_url"]["url"] == str(tmp_path / "g.png")  # the sample itself is untouched


def test_regional_compile_keeps_losses_gradients_and_checkpoint_keys():
    """`nanogpt4 vision --compile` compiles each decoder block in place (dynamic shapes: rows of every length):
    the same loss and gradients as eager at two row lengths, and the same state_dict keys (checkpoints load)."""
    import copy
    eager = perturbed_gpt(n_layer=2, seq_len=32)
    compiled = copy.deepcopy(eager)
    for block in compiled.blocks:
        block.compile(dynamic=True)
    assert list(compiled.state_dict()) == list(eager.state_dict())
    for T in (12, 29):
        x, y = torch.randint(0, 256, (3, T)), torch.randint(0, 256, (3, T))
        mask = (torch.rand(3, T) > 0.5).long()
        want, got = eager(x, y, loss_mask=mask), compiled(x, y, loss_mask=mask)
        assert got.item() == pytest.approx(want.item(), rel=1e-4)
        g_want = torch.autograd.grad(want, eager.blocks[0].parameters())
        g_got = torch.autograd.grad(got, compiled.blocks[0].parameters())
        assert all(torch.allclose(a, b, atol=1e-5, rtol=1e-3) for a, b in zip(g_got, g_want))
