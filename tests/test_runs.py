"""Loading a run for inference: config defaults, the newest checkpoint that verifies, clear errors, and no
inference path importing the trainer."""
import json
import shutil
import subprocess
import sys

import pytest
import torch

from nanogpt4 import checkpoint, runs
from nanogpt4.config import TrainConfig


def copy_run(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_load_gives_model_tokenizer_and_checkpoint(local_run):
    run = runs.load(local_run, "cpu")
    assert not run.model.training and run.device.type == "cpu"
    assert run.checkpoint.name == "step_0000000" and run.checkpoint_id.startswith("step_0000000:")
    assert run.checkpoint_id == runs.checkpoint_id(local_run)
    assert run.tok.vocab_size <= run.model.cfg.vocab_size


def test_config_gets_defaults_for_fields_added_later(local_run, tmp_path):
    run = copy_run(local_run, tmp_path / "r")
    cfg = json.loads((run / "config.json").read_text())
    cfg["train"] = {"depth": 1}  # written by an older version that knew fewer fields
    del cfg["model"]["smear_keys"]
    (run / "config.json").write_text(json.dumps(cfg))
    got = runs.read_config(run)
    assert got["train"]["depth"] == 1 and got["train"]["seq_len"] == TrainConfig().seq_len
    assert "smear_keys" not in got["model"]  # as trained: identity checks compare what the run really had
    assert runs.load(run, "cpu").model.cfg.smear_keys is True  # the model gets the dataclass default
    cfg["model"]["from_the_future"] = 1
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(runs.RunError, match="from_the_future"):
        runs.read_config(run)


def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before(local_run, tmp_path):
    run = copy_run(local_run, tmp_path / "r")
    model = runs.load(run, "cpu").model
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    checkpoint.save(run / "ckpt", model, None, {"step": 5})
    assert runs.load(run, "cpu").checkpoint.name == "step_0000005"
    blob = run / "ckpt" / "step_0000005" / "model.safetensors"
    blob.write_bytes(blob.read_bytes()[:-10])
    assert runs.load(run, "cpu").checkpoint.name == "step_0000000"
    shutil.rmtree(run / "ckpt" / "step_0000000")
    with pytest.raises(runs.RunError, match="no usable checkpoint.*step_0000005.*corrupt"):
        runs.load(run, "cpu")


@pytest.mark.parametrize("damage,match", [
    (lambda r: shutil.rmtree(r), "does not exist"),
    (lambda r: (r / "tokenizer.json").unlink(), "no tokenizer.json"),
    (lambda r: (r / "config.json").write_text("{"), "unreadable"),
    (lambda r: shutil.rmtree(r / "ckpt"), "no usable checkpoint"),
])
def test_broken_runs_get_clear_errors(local_run, tmp_path, damage, match):
    run = copy_run(local_run, tmp_path / "r")
    damage(run)
    with pytest.raises(runs.RunError, match=match):
        runs.load(run, "cpu")


def test_no_inference_path_imports_the_trainer():
    code = ("import sys; import nanogpt4.sample, nanogpt4.engine, nanogpt4.runs, nanogpt4.chat, "
            "nanogpt4.evals.completion, nanogpt4.evals.run, nanogpt4.evals.benchmarks, nanogpt4.scaling.capability; "
            "bad = [m for m in sys.modules if m.startswith('nanogpt4.train')]; print(bad); sys.exit(bool(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
