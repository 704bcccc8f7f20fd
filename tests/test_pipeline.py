"""The main job end to end on a small real corpus (Bible + CPython stdlib, sympy held out) and the tiny preset:
every stage runs, the report card has its numbers and plots, and a second run skips the finished stages."""
import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.network
def test_main_job_tiny_preset(tmp_path):
    out = tmp_path / "work"
    env_cache = ["--cache", str(tmp_path / "cache")]
    cmd = [sys.executable, "-m", "nanogpt4.cli", "run", "--out", str(out), "--preset", "tiny",
           "--sources", "bible,cpython-stdlib", "--vocab-size", "2048", *env_cache]
    first = subprocess.run(cmd, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    report = (out / "report.md").read_text()
    for needle in ("## Corpus", "bible", "## Tokenizer", "cl100k_base", "## Pretraining", "tokens/s", "MFU",
                   "heldout_code", "## Samples", "In the beginning", "## Stage timings", "## Evals", "MMLU",
                   "HumanEval", "GSM-8K", "TruthfulQA", "ECE", "## Serving smoke test", "all passed", "## Post-training",
                   "fails to refuse (disallowed)", "human-labelled TruthfulQA pairs",
                   "rlhf vs sft", "letter mode side by side", "TruthfulQA MC1 of both models",
                   "## Vision", "| colour |", "Held-out text loss", "vision/examples/colour-0.png",
                   "## Long context", "pretrain-long/by_position.png"):
        assert needle in report, needle
    assert (out / "loss.png").stat().st_size > 10_000 and (out / "throughput.png").exists()
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings) >= {"data", "tokenizer", "scaling", "long-context", "sample", "serve", "posttrain-data", "sft", "rm", "rlhf",
                            "dpo", "behaviour", "vision-data", "vision"}
    from nanogpt4.serve import models
    served = models.load(out / "models.yaml")
    assert served.resolve("nano4").run == (out / "rlhf").resolve()  # RLHF is recommended
    assert [n for n in served.names() if n.startswith("nano4-vision-")]  # the vision model is served
    long = served.resolve(next(n for n in served.names() if n.startswith("nano4-base-1024-")))  # and the 4× variant
    assert long.run == (out / "pretrain-long").resolve() and long.prices == dict(prompt=0.06, completion=0.12)
    assert (out / "vision" / "examples" / "colour-0.png").stat().st_size > 100
    smoke = json.loads((out / "serve_smoke.json").read_text())
    assert smoke["passed"] and smoke["checks"]["usage metered"]["passed"] and smoke["ttft_s"] > 0
    second = subprocess.run(cmd, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "is up to date" in second.stdout and "is complete" in second.stdout
    assert json.loads((out / "timings.json").read_text())["scaling"] == timings["scaling"]
    # the base model is the scaling stage's registered target, trained after its prediction was sealed
    from nanogpt4.scaling import registry
    record = registry.load(out / "scaling" / "prediction_loss.json")
    assert Path(record["target_run"]) == out / "pretrain" and "registered target" in report
    assert (out / "pretrain" / "done.json").stat().st_mtime > (out / "scaling" / "prediction_loss.json").stat().st_mtime


def test_every_main_job_preset_has_its_base_model_and_ladder():
    """One place sets the base model: the scaling preset of the same name (`nanogpt4 run --preset X` trains the
    ladder and the base model of scaling/ladder.py's PRESETS[X]); the main job's table holds only later stages."""
    from nanogpt4 import pipeline
    from nanogpt4.scaling import ladder
    assert set(pipeline.PRESETS) == set(ladder.PRESETS)
    assert all("pretrain" not in stages and "scaling" not in stages for stages in pipeline.PRESETS.values())
