"""Pretraining tests: artifacts, exact resume after SIGKILL, corrupt checkpoints, the spike guard, DDP = single
process, and sampling. All on a tiny model in fp32 (exactness is a property of fp32 CPU paths)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from nanogpt4 import config as C
from nanogpt4.model.gpt import GPT
from nanogpt4.train import checkpoint, pretrain

TINY = ["--depth", "1", "--seq-len", "64", "--batch-tokens", "1024", "--micro-batch", "8", "--max-tokens", "40960",
        "--dtype", "float32", "--eval-every", "10", "--eval-tokens", "2048", "--ckpt-every", "5", "--lr", "0.01"]


def tiny_model(tokens_root):
    vocab = json.loads((tokens_root / "tokenizer" / "tokens" / "meta.json").read_text())["vocab_size"]
    return GPT(C.TrainConfig(depth=1, seq_len=64, vocab_size=vocab).model_config())


def tiny_config(**kw):
    tc = C.TrainConfig(depth=1, seq_len=64, batch_tokens=1024, micro_batch=8, max_tokens=40960, dtype="float32",
                       eval_every=10, eval_tokens=2048, ckpt_every=5, lr=0.01, vocab_size=512)
    for k, v in kw.items():
        setattr(tc, k, v)
    return tc


def losses(run):
    rows = [json.loads(l) for l in open(run / "metrics.jsonl")]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r and "event" not in r]


def cli(*args):
    return [sys.executable, "-m", "nanogpt4.cli", *args]


def test_train_writes_run_directory_and_learns(tiny_tokens, tmp_path):
    run = tmp_path / "run"
    final = pretrain.train(tiny_config(), run, tiny_tokens / "tokenizer" / "tokens", quiet=True)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["git_commit"] and cfg["command"] and cfg["model"]["n_layer"] == 1 and cfg["derived"]["steps"] == 40
    rows = [json.loads(l) for l in open(run / "metrics.jsonl")]
    train_rows = [r for r in rows if "tok_s" in r]
    assert train_rows and all(r["tok_s"] > 0 and 0 < r["mfu"] < 1 for r in train_rows)
    evals = [r for r in rows if "val/heldout_code" in r]
    assert evals[-1]["val/val_text"] < evals[0]["val/val_text"] - 0.5  # it learns the grammar
    assert set(final) == {"val_text", "val_code", "heldout_code"}
    done = json.loads((run / "done.json").read_text())
    assert done["step"] == 40 and done["flops"] > 0
    ckpt = checkpoint.latest(run / "ckpt")
    assert ckpt.name == "step_0000040" and (ckpt / "model.safetensors").exists()
    assert (run / "tokenizer.json").exists()
    with pytest.raises(ValueError, match="different config"):  # a run dir is bound to its config
        pretrain.train(tiny_config(lr=0.02), run, tiny_tokens / "tokenizer" / "tokens", resume=True, quiet=True)


def test_resume_after_sigkill_reproduces_uninterrupted_run(tiny_tokens, tmp_path):
    tokens = str(tiny_tokens / "tokenizer" / "tokens")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    subprocess.run(cli("pretrain", "--out", str(ref), "--tokens", tokens, "--quiet", *TINY), env=env, check=True)
    proc = subprocess.Popen(cli("pretrain", "--out", str(cut), "--tokens", tokens, "--quiet", *TINY), env=env)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill -9 once a checkpoint past step 10 exists, mid-run
        latest = checkpoint.latest(cut / "ckpt")
        if latest and int(latest.name.split("_")[1]) >= 15:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cut / "done.json").exists(), "run finished before it could be killed"
    subprocess.run(cli("pretrain", "--out", str(cut), "--tokens", tokens, "--quiet", "--resume", *TINY), env=env,
                   check=True)
    assert losses(cut) == losses(ref)  # bit-identical loss curve
    wa = tiny_model(tiny_tokens)
    meta_ref = checkpoint.load(checkpoint.latest(ref / "ckpt"), wa)
    wb = GPT(wa.cfg)
    checkpoint.load(checkpoint.latest(cut / "ckpt"), wb)
    assert all(torch.equal(p, q) for p, q in zip(wa.parameters(), wb.parameters()))
    assert meta_ref["step"] == 40


def test_corrupt_or_truncated_checkpoint_is_refused(tiny_tokens, tmp_path):
    run = tmp_path / "run"
    pretrain.train(tiny_config(max_tokens=10240), run, tiny_tokens / "tokenizer" / "tokens", quiet=True)
    ckpt = checkpoint.latest(run / "ckpt")
    model = GPT(C.TrainConfig(depth=1, seq_len=64, vocab_size=512).model_config())
    checkpoint.load(ckpt, model)  # intact: loads
    weights = ckpt / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError, match="corrupt or truncated"):
        checkpoint.load(ckpt, model)
    weights.write_bytes(bytes(data[: len(data) // 3]))
    with pytest.raises(checkpoint.CheckpointError, match="corrupt or truncated"):
        checkpoint.load(ckpt, model)
    with pytest.raises(checkpoint.CheckpointError):
        pretrain.train(tiny_config(max_tokens=10240), run, tiny_tokens / "tokenizer" / "tokens", resume=True,
                       quiet=True)


def test_spike_guard_rolls_back_and_skips_the_batch(tiny_tokens, tmp_path, monkeypatch):
    poison, sentinel = 17, 3
    real_batch, real_forward = pretrain.get_batch, GPT.forward

    def batch(data, data_step, *a, **kw):
        x, y = real_batch(data, data_step, *a, **kw)
        return (torch.full_like(x, sentinel), y) if data_step == poison else (x, y)

    def forward(self, idx, targets=None, **kw):
        out = real_forward(self, idx, targets, **kw)
        return out * float("nan") if targets is not None and bool((idx == sentinel).all()) else out

    monkeypatch.setattr(pretrain, "get_batch", batch)
    monkeypatch.setattr(GPT, "forward", forward)
    run = tmp_path / "run"
    final = pretrain.train(tiny_config(), run, tiny_tokens / "tokenizer" / "tokens", quiet=True)
    events = [json.loads(l) for l in open(run / "metrics.jsonl") if '"event"' in l]
    assert len(events) == 1 and events[0]["skipped_batch"] == poison and events[0]["rolled_back_to"] == 15
    done = json.loads((run / "done.json").read_text())
    assert done["skipped"] == [poison] and done["step"] == 40
    assert all(torch.isfinite(torch.tensor(v)) for v in final.values())
    steps = [s for s, _ in losses(run)]
    assert steps == sorted(set(steps))  # the replayed steps were not logged twice


@pytest.mark.slow
def test_ddp_two_processes_equal_single_process(tiny_tokens, tmp_path):
    tokens = str(tiny_tokens / "tokenizer" / "tokens")
    args = ["--tokens", tokens, "--quiet", *TINY, "--max-tokens", "10240"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(cli("pretrain", "--out", str(tmp_path / "single"), *args), env=env, check=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
                "-m", "nanogpt4.cli"]
    subprocess.run([*torchrun, "pretrain", "--out", str(tmp_path / "ddp"), *args], env=env, check=True)
    single, ddp = losses(tmp_path / "single"), losses(tmp_path / "ddp")
    assert [s for s, _ in single] == [s for s, _ in ddp]
    for (_, a), (_, b) in zip(single, ddp):
        assert abs(a - b) < 1e-5 * abs(a)
    m1, m2 = tiny_model(tiny_tokens), tiny_model(tiny_tokens)
    checkpoint.load(checkpoint.latest(tmp_path / "single" / "ckpt"), m1)
    checkpoint.load(checkpoint.latest(tmp_path / "ddp" / "ckpt"), m2)
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.allclose(p, q, atol=1e-5, rtol=1e-4)
    cfg = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert cfg["world_size"] == 2


def test_sample_cli(tiny_tokens, tmp_path):
    run = tmp_path / "run"
    pretrain.train(tiny_config(max_tokens=10240), run, tiny_tokens / "tokenizer" / "tokens", quiet=True)
    out = subprocess.run(cli("sample", "--run", str(run), "--prompt", "The cat", "--num", "2",
                             "--max-new-tokens", "20"), capture_output=True, text=True, check=True).stdout
    assert out.count("--- sample") == 2 and "The cat" in out
