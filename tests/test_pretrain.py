"""Pretraining tests: artifacts, exact resume after SIGKILL, corrupt checkpoints, the spike guard, DDP = single
process, and sampling. All on a tiny model in fp32 (exactness is a property of fp32 CPU paths)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from nanogpt4 import config as C
from nanogpt4 import report
from nanogpt4.common import UserError
from nanogpt4.model.gpt import GPT
from nanogpt4 import checkpoint
from nanogpt4.train import pretrain

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
    with pytest.raises(ValueError, match="different config") as e:  # a run dir is bound to its config
        pretrain.train(tiny_config(lr=0.02), run, tiny_tokens / "tokenizer" / "tokens", resume=True, quiet=True)
    assert isinstance(e.value, UserError)  # the CLI prints it as one line


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


def test_sigterm_stops_after_the_step_with_a_checkpoint_and_resume_is_exact(tiny_tokens, tmp_path, monkeypatch):
    """A preemption notice (SIGTERM, as `kill PID` or a scheduler sends) mid-run: the run checkpoints the step it
    was on, between the every-5-steps checkpoints, stops with a user error, and resumes bit-identically."""
    tokens = tiny_tokens / "tokenizer" / "tokens"
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    pretrain.train(tiny_config(max_tokens=20480), ref, tokens, quiet=True)
    real_batch = pretrain.get_batch

    def batch(data, data_step, *a, **kw):
        if data_step == 7:
            os.kill(os.getpid(), signal.SIGTERM)  # delivered to the handler at once: during step 7
        return real_batch(data, data_step, *a, **kw)

    monkeypatch.setattr(pretrain, "get_batch", batch)
    with pytest.raises(pretrain.Preempted, match="stopped by SIGTERM at step 8 of 20") as e:
        pretrain.train(tiny_config(max_tokens=20480), cut, tokens, quiet=True)
    assert isinstance(e.value, UserError)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone after the run
    assert checkpoint.latest(cut / "ckpt").name == "step_0000008" and not (cut / "done.json").exists()
    monkeypatch.setattr(pretrain, "get_batch", real_batch)
    pretrain.train(tiny_config(max_tokens=20480), cut, tokens, resume=True, quiet=True)
    assert losses(cut) == losses(ref)
    wa, wb = GPT(tiny_config().model_config()), GPT(tiny_config().model_config())
    checkpoint.load(checkpoint.latest(ref / "ckpt"), wa)
    checkpoint.load(checkpoint.latest(cut / "ckpt"), wb)
    assert all(torch.equal(p, q) for p, q in zip(wa.parameters(), wb.parameters()))
    stopped = [json.loads(l) for l in open(cut / "metrics.jsonl") if '"stopped"' in l]
    assert [(r["step"], r["signal"]) for r in stopped] == [(8, "SIGTERM")]


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
    corrupt(run / "ckpt" / "step_0000005" / "model.safetensors")  # no checkpoint left that verifies
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint .* verifies"):
        pretrain.train(tiny_config(max_tokens=10240), run, tiny_tokens / "tokenizer" / "tokens", resume=True,
                       quiet=True)


def poison(monkeypatch, data_steps, loss=lambda real: real * float("nan"), clean=None, crash_at=None):
    """Make the training batches at `data_steps` return loss(real loss); clean(real) is every other training
    batch's loss (default: the real one). crash_at: the data step at which the run dies (once), as if killed."""
    sentinel, real_batch, real_forward = 3, pretrain.get_batch, GPT.forward
    crashed = []

    def batch(data, data_step, *a, **kw):
        if data_step == crash_at and not crashed:
            crashed.append(data_step)
            raise KeyboardInterrupt
        x, y = real_batch(data, data_step, *a, **kw)
        return (torch.full_like(x, sentinel), y) if data_step in data_steps else (x, y)

    def forward(self, idx, targets=None, **kw):
        out = real_forward(self, idx, targets, **kw)
        if targets is None or kw.get("reduction", "mean") != "mean":  # evaluation and sampling: untouched
            return out
        return loss(out) if bool((idx == sentinel).all()) else clean(out) if clean else out

    monkeypatch.setattr(pretrain, "get_batch", batch)
    monkeypatch.setattr(GPT, "forward", forward)


def spike_events(run):
    return [json.loads(l) for l in open(run / "metrics.jsonl") if '"event"' in l]


def test_spike_guard_rolls_back_and_skips_the_batch(tiny_tokens, tmp_path, monkeypatch):
    poison(monkeypatch, {17})
    run = tmp_path / "run"
    final = pretrain.train(tiny_config(), run, tiny_tokens / "tokenizer" / "tokens", quiet=True)
    events = spike_events(run)
    assert len(events) == 1 and events[0]["skipped_batch"] == 17 and events[0]["rolled_back_to"] == 15
    done = json.loads((run / "done.json").read_text())
    assert done["skipped"] == [17] and done["step"] == 40
    assert all(torch.isfinite(torch.tensor(v)) for v in final.values())
    steps = [s for s, _ in losses(run)]
    assert steps == sorted(set(steps))  # the replayed steps were not logged twice


@pytest.mark.parametrize("factor,spikes", [(1.01, 1), (0.99, 0)])
def test_spike_guard_threshold_is_spike_factor_times_running_mean(tiny_tokens, tmp_path, monkeypatch, factor, spikes):
    tc = tiny_config(max_tokens=10240)  # 10 steps, checkpoints every 5
    level = 2.0  # every training loss is exactly this, so the running mean is too
    poison(monkeypatch, {7}, loss=lambda real: real * 0 + level * tc.spike_factor * factor,
           clean=lambda real: real * 0 + level)
    pretrain.train(tc, tmp_path / "run", tiny_tokens / "tokenizer" / "tokens", quiet=True)
    events = spike_events(tmp_path / "run")
    assert len(events) == spikes
    if spikes:
        assert events[0]["skipped_batch"] == 7 and events[0]["rolled_back_to"] == 5
        assert abs(events[0]["ema"] - level) < 1e-6


def test_endless_spikes_give_up_with_a_user_error(tiny_tokens, tmp_path, monkeypatch):
    poison(monkeypatch, set(range(6, 1000)))
    with pytest.raises(pretrain.SpikeError, match="more than 10 loss spikes") as e:
        pretrain.train(tiny_config(max_tokens=10240), tmp_path / "run", tiny_tokens / "tokenizer" / "tokens", quiet=True)
    assert isinstance(e.value, UserError)
    assert len(spike_events(tmp_path / "run")) == 10


def test_spike_events_survive_a_second_rollback(tiny_tokens, tmp_path, monkeypatch):
    poison(monkeypatch, {7, 8})  # the second spike rolls back to the same checkpoint as the first
    run = tmp_path / "run"
    pretrain.train(tiny_config(max_tokens=10240), run, tiny_tokens / "tokenizer" / "tokens", quiet=True)
    assert [e["skipped_batch"] for e in spike_events(run)] == [7, 8]
    assert json.loads((run / "done.json").read_text())["skipped"] == [7, 8]


def test_resume_after_a_spike_logs_it_once(tiny_tokens, tmp_path, monkeypatch):
    poison(monkeypatch, {7}, crash_at=9)  # killed after the rollback to step 5, before the next checkpoint
    run, tokens = tmp_path / "run", tiny_tokens / "tokenizer" / "tokens"
    with pytest.raises(KeyboardInterrupt):
        pretrain.train(tiny_config(max_tokens=10240), run, tokens, quiet=True)
    assert len(spike_events(run)) == 1
    pretrain.train(tiny_config(max_tokens=10240), run, tokens, resume=True, quiet=True)
    assert [e["skipped_batch"] for e in spike_events(run)] == [7]  # the resumed run knew to skip the batch
    done = json.loads((run / "done.json").read_text())
    assert done["skipped"] == [7] and done["step"] == 10


def test_torn_last_metrics_line_is_dropped(tiny_tokens, tmp_path):
    run, tokens = tmp_path / "run", tiny_tokens / "tokenizer" / "tokens"
    pretrain.train(tiny_config(max_tokens=10240), run, tokens, quiet=True)
    path = run / "metrics.jsonl"
    rows = report._metrics(run)
    with open(path, "a") as f:
        f.write('{"step": 10, "tok')  # a write cut short by a crash
    assert report._metrics(run) == rows
    pretrain.train(tiny_config(max_tokens=10240), run, tokens, resume=True, quiet=True)
    assert report._metrics(run) == rows
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:1] + ['{"step": 1, "tok'] + lines[1:]) + "\n")
    with pytest.raises(ValueError, match=f"{path}:2: invalid JSON"):  # a bad line mid-file is not a torn write
        report._metrics(run)
    with pytest.raises(ValueError, match=f"{path}:2: invalid JSON"):
        pretrain.train(tiny_config(max_tokens=10240), run, tokens, resume=True, quiet=True)


def copy_tokens(tiny_tokens, dst, tokenizer=True, short=None):
    """A copy of the tiny token shards (and, if `tokenizer`, the tokenizer beside them); `short`: (split, n) cuts
    that split to n tokens."""
    src = tiny_tokens / "tokenizer" / "tokens"
    shutil.copytree(src, dst / "tokens")
    if tokenizer:
        shutil.copyfile(src.parent / "tokenizer.json", dst / "tokenizer.json")
    if short:
        split, n = short
        meta = json.loads((dst / "tokens" / "meta.json").read_text())
        meta["splits"][split]["tokens"] = n
        (dst / "tokens" / "meta.json").write_text(json.dumps(meta))
        bin_ = dst / "tokens" / f"{split}.bin"
        bin_.write_bytes(bin_.read_bytes()[:2 * n])
    return dst / "tokens"


def test_eval_split_shorter_than_a_window_is_an_error(tiny_tokens, tmp_path):
    tokens = copy_tokens(tiny_tokens, tmp_path, short=("val_code", 40))
    with pytest.raises(UserError, match=r"val_code has 40 tokens"):
        pretrain.train(tiny_config(), tmp_path / "run", tokens, quiet=True)
    assert not (tmp_path / "run" / "ckpt").exists()


def test_missing_tokenizer_is_an_error_before_training(tiny_tokens, tmp_path):
    tokens = copy_tokens(tiny_tokens, tmp_path, tokenizer=False)
    with pytest.raises(UserError, match="tokenizer.json"):
        pretrain.train(tiny_config(), tmp_path / "run", tokens, quiet=True)
    assert not (tmp_path / "run" / "ckpt").exists()


def test_invalid_config_values_are_user_errors():
    pretrain.check_config(tiny_config())
    with pytest.raises(UserError, match="--depth -1"):
        pretrain.check_config(tiny_config(depth=-1))
    with pytest.raises(UserError, match="--dtype float8"):
        pretrain.check_config(tiny_config(dtype="float8"))
    with pytest.raises(UserError, match="--beta2 1.5"):
        pretrain.check_config(tiny_config(beta2=1.5))


def test_default_dtype_is_bf16_only_where_the_device_has_bf16_arithmetic(monkeypatch, tmp_path):
    """CPUs without AVX512-BF16 or AMX train in float32 (bf16 is emulated there, 2.2× slower), a GPU in bf16;
    NANOGPT4_DTYPE overrides; a run started in the other dtype is refused with the way to continue it."""
    from nanogpt4 import perf
    monkeypatch.delenv("NANOGPT4_DTYPE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for avx512_bf16, amx, want in ((False, False, "float32"), (True, False, "bfloat16"), (False, True, "bfloat16")):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        assert perf.fast_dtype("cpu") == C.TrainConfig().dtype == want
    assert perf.fast_dtype("cuda") == "bfloat16" and C.TrainConfig().identity()["dtype"] == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert perf.fast_dtype("cpu") == "float32" and C.TrainConfig().dtype == "bfloat16"  # pretraining uses the GPU
    monkeypatch.setenv("NANOGPT4_DTYPE", "float32")
    assert C.TrainConfig().dtype == "float32"
    monkeypatch.setenv("NANOGPT4_DTYPE", "float16")
    with pytest.raises(ValueError, match="bfloat16 or float32"):
        perf.fast_dtype()
    monkeypatch.delenv("NANOGPT4_DTYPE")
    tc = tiny_config(dtype="bfloat16")
    pretrain.record_config(tmp_path, tc, C.derive(tc), tc.model_config(), tmp_path, {})
    tc.dtype = "float32"
    with pytest.raises(pretrain.ConfigError, match="NANOGPT4_DTYPE=bfloat16 to continue it"):
        pretrain.record_config(tmp_path, tc, C.derive(tc), tc.model_config(), tmp_path, {})


def corrupt(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_latest_valid_skips_corrupt_checkpoints(tmp_path):
    model = GPT(C.TrainConfig(depth=1, seq_len=64, vocab_size=512).model_config())
    root = tmp_path / "ckpt"
    for step in (5, 10, 15):
        checkpoint.save(root, model, None, {"step": step})
    assert checkpoint.latest_valid(root) == (root / "step_0000015", [])
    corrupt(root / "step_0000015" / "model.safetensors")
    (root / "step_0000010" / "meta.json").write_text('{"step": 1')
    path, rejected = checkpoint.latest_valid(root)
    assert path == root / "step_0000005"
    assert len(rejected) == 2 and "step_0000015: model.safetensors is corrupt" in rejected[0]
    assert "step_0000010: unreadable meta.json" in rejected[1]
    corrupt(root / "step_0000005" / "model.safetensors")
    assert checkpoint.latest_valid(root)[0] is None
    assert checkpoint.latest_valid(tmp_path / "none") == (None, [])


def test_resume_skips_a_corrupt_latest_checkpoint(tiny_tokens, tmp_path, capsys):
    run, tokens = tmp_path / "run", tiny_tokens / "tokenizer" / "tokens"
    pretrain.train(tiny_config(max_tokens=10240), run, tokens, quiet=True)
    ref = losses(run)
    corrupt(run / "ckpt" / "step_0000010" / "model.safetensors")
    capsys.readouterr()
    pretrain.train(tiny_config(max_tokens=10240), run, tokens, resume=True, quiet=True)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "step_0000010" in err[0] and "corrupt" in err[0] and "resuming from" in err[0]
    assert err[0].endswith("step_0000005")
    assert losses(run) == ref  # steps 6-10 trained again, exactly as before
    checkpoint.load(checkpoint.latest(run / "ckpt"), GPT(tiny_config().model_config()))  # the new step 10 verifies
    assert json.loads((run / "done.json").read_text())["step"] == 10


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
