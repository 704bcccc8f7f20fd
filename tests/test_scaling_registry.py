"""Registered predictions cannot be changed after registration, nor verified against another target."""
import json

import pytest

from nanogpt4.scaling import registry as R

TARGET = {"depth": 6, "lr": 0.006, "seed": 1}
LADDER = [{"config_hash": R.config_hash({"depth": d, "lr": 0.006, "seed": 1}), "compute": 10.0 ** d, "loss": 6 - d / 2}
          for d in (1, 2, 3)]


def test_register_seal_and_tamper_detection(tmp_path):
    path = tmp_path / "prediction.json"
    rec = R.register(path, TARGET, tmp_path / "target", LADDER, {"loss": 3.1, "interval": [3.0, 3.2]})
    assert R.load(path) == rec and rec["target_config_hash"] == R.config_hash(TARGET)
    with pytest.raises(R.RegistryError, match="never overwritten"):
        R.register(path, TARGET, tmp_path / "target", LADDER, {"loss": 2.0})
    assert path.stat().st_mode & 0o777 == 0o444  # read-only on disk; the seal below catches even root's edits
    data = json.loads(path.read_text())
    data["prediction"]["loss"] = 3.0
    path.chmod(0o644)
    path.write_text(json.dumps(data))
    with pytest.raises(R.RegistryError, match="changed after registration"):
        R.load(path)


def test_refusals(tmp_path):
    started = tmp_path / "started"
    started.mkdir()
    (started / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(R.RegistryError, match="already started"):
        R.register(tmp_path / "p.json", TARGET, started, LADDER, {"loss": 3.0})
    with pytest.raises(R.RegistryError, match="any result of the target"):
        R.register(tmp_path / "q.json", TARGET, tmp_path / "t", LADDER + [{"config_hash": R.config_hash(TARGET)}],
                   {"loss": 3.0})
    rec = R.register(tmp_path / "r.json", TARGET, tmp_path / "t", LADDER, {"loss": 3.0})
    R.check_target(rec, dict(TARGET))
    with pytest.raises(R.RegistryError, match="differs from the registered one"):
        R.check_target(rec, dict(TARGET, lr=0.01))


def test_every_law_registered_the_rule_weights_by_validation_and_verification_reads_all(tmp_path):
    """register_loss on a grid drawn from known laws (held-out code from Hoffmann's L(N, D), text from Kaplan's): every
    law is registered, the sealed rule's combination puts nearly all weight on each metric's true law by its
    error on the validation runs (the capability runs, not in the fit) and recovers the target's loss; without
    validation runs the weights are equal; verification reads every law and the combination back and Figure 1 is
    drawn."""
    from nanogpt4.scaling import ladder as L, laws, predict
    preset = L.PRESETS["cpu"]
    truth = dict(heldout_code=laws.ParamTokenFit(E=1.5, A=1.0, alpha=0.3, B=2.0, beta=0.3, n_ref=1e6, d_ref=1e7),
                 val_text=laws.KaplanFit(E=1.5, A=0.5, alpha=0.35, B=1.0, beta=0.3, n_ref=1e6, d_ref=1e7))

    def rows(configs):
        out = []
        for tc in configs:
            at = predict.size(tc)
            out.append(dict(name=L.name(tc), tokens_per_param=tc.tokens_per_param, compute=at["compute"],
                            non_embedding_params=at["n"], tokens=at["d"], non_embedding_compute=at["ne"],
                            final={m: float(t.predict(at["n"], at["d"])) for m, t in truth.items()},
                            config_hash=R.config_hash(tc.identity())))
        return out

    target = L.target_config(preset)
    at = predict.size(target)
    compute, want = at["compute"], {m: float(t.predict(at["n"], at["d"])) for m, t in truth.items()}
    record = predict.register_loss(tmp_path / "rec.json", target, tmp_path / "base", rows(L.fit_configs(preset)),
                                   validation=rows(L.cap_configs(preset)), curve=L.target_line(preset), n_boot=30)
    pred = record["prediction"]
    assert [v["name"] for v in pred["validation_runs"]] == [L.name(tc) for tc in L.cap_configs(preset)]
    for m, law in (("heldout_code", "Hoffmann L(N,D)"), ("val_text", "Kaplan L(N,D)")):
        assert set(pred["laws"][m]) == set(predict.LAWS)
        reg = pred["metrics"][m]
        assert reg["law"] == "combination" and reg["weights"][law] > 0.99 and abs(sum(reg["weights"].values()) - 1) < 1e-9
        assert abs(reg["loss"] / want[m] - 1) < 0.01, m
        assert pred["laws"][m][law]["validation_mae"] < 1e-3 < max(p["validation_mae"] for p in pred["laws"][m].values())
    plain = predict.register_loss(tmp_path / "plain.json", target, tmp_path / "base", rows(L.fit_configs(preset)),
                                  n_boot=10)
    for m, reg in plain["prediction"]["metrics"].items():
        laws_ = plain["prediction"]["laws"][m].values()
        assert set(reg["weights"].values()) == {1 / len(predict.LAWS)} and reg["validation_mae"] is None
        assert reg["loss"] == pytest.approx(sum(p["loss"] for p in laws_) / len(predict.LAWS))
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text(json.dumps(dict(train=target.to_dict(),
                                                                   model=target.model_config().to_dict())))
    (tmp_path / "base" / "done.json").write_text(json.dumps(dict(flops=compute, final=want)))
    res = predict.verify_loss(tmp_path / "rec.json", tmp_path / "base", tmp_path, others=rows(L.cap_configs(preset)))
    for m, v in res["metrics"].items():
        assert abs(v["rel_error"]) < 0.01 and v["law"] == "combination" and set(v["laws"]) == set(predict.LAWS)
        assert v["weights"] == pred["metrics"][m]["weights"]
        assert (tmp_path / f"fig1_{m}.png").stat().st_size > 10_000
    old = json.loads((tmp_path / "rec.json").read_text())  # a record sealed by the single-law rule still draws
    old["prediction"]["metrics"] = {m: pred["laws"][m]["Hoffmann L(N,D)"] for m in pred["metrics"]}
    predict.plot_loss(old, "heldout_code", want["heldout_code"], compute, tmp_path / "old.png")
    assert (tmp_path / "old.png").stat().st_size > 10_000


def test_a_power_law_in_non_embedding_compute_is_found_and_drawn(tmp_path):
    """Losses that follow Kaplan et al.'s L(C) = a·C^b in non-embedding compute (not in total compute: the readout
    is most of a narrow run's compute) give that law nearly all the weight on the long preset's ladder, with its
    validation runs, and the registered prediction is the true loss of the target; verify draws the law."""
    from nanogpt4.scaling import ladder as L, predict
    preset = L.PRESETS["long"]
    truth = {m: (lambda ne, a=a: a * (ne / 1e15) ** -0.04) for m, a in (("heldout_code", 2.8), ("val_text", 3.4))}

    def rows(configs):
        out = []
        for tc in configs:
            at = predict.size(tc)
            out.append(dict(name=L.name(tc), tokens_per_param=tc.tokens_per_param, compute=at["compute"],
                            non_embedding_params=at["n"], tokens=at["d"], non_embedding_compute=at["ne"],
                            final={m: float(f(at["ne"])) for m, f in truth.items()},
                            config_hash=R.config_hash(tc.identity())))
        return out

    target = L.target_config(preset)
    at = predict.size(target)
    rec = predict.register_loss(tmp_path / "rec.json", target, tmp_path / "base", rows(L.fit_configs(preset)),
                                validation=rows(L.cap_configs(preset)), curve=L.target_line(preset), n_boot=10)
    assert rec["prediction"]["target_non_embedding_compute"] == at["ne"] < at["compute"]
    for m, reg in rec["prediction"]["metrics"].items():
        assert reg["weights"]["Kaplan L(C)"] > 0.99 and reg["loss"] == pytest.approx(truth[m](at["ne"]), rel=1e-3)
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text(json.dumps(dict(train=target.to_dict(),
                                                                   model=target.model_config().to_dict())))
    (tmp_path / "base" / "done.json").write_text(json.dumps(dict(flops=at["compute"],
                                                                 final={m: f(at["ne"]) for m, f in truth.items()})))
    res = predict.verify_loss(tmp_path / "rec.json", tmp_path / "base", tmp_path)
    assert all(abs(v["rel_error"]) < 1e-3 for v in res["metrics"].values())
    assert (tmp_path / "fig1_val_text.png").stat().st_size > 10_000


def test_the_rule_scores_only_runs_outside_the_fit_and_never_weights_a_non_finite_error(tmp_path):
    """A validation run that is a fit run is refused before anything is written; the combination weights laws by
    1/MSE (Bates-Granger), its interval and validation errors are the same weighted means; a law whose validation
    error is NaN gets weight 0, however it is listed, and no finite error at all is an error; a record sealed before
    every law was registered is refused by verification with a clear message."""
    from nanogpt4.scaling import ladder as L, predict
    preset = L.PRESETS["tiny"]
    rows = []
    for tc in L.fit_configs(preset):
        at = predict.size(tc)
        rows.append(dict(name=L.name(tc), compute=at["compute"], non_embedding_params=at["n"], tokens=at["d"],
                         non_embedding_compute=at["ne"],
                         final=dict(heldout_code=3.0, val_text=4.0), config_hash=R.config_hash(tc.identity())))
    with pytest.raises(R.RegistryError, match="outside the fit"):
        predict.register_loss(tmp_path / "rec.json", L.target_config(preset), tmp_path / "t", rows, validation=rows[:1])
    assert not (tmp_path / "rec.json").exists()
    def law(name, loss, errs, interval=None):
        return dict(law=name, loss=loss, interval=interval or [loss - 0.1, loss + 0.1], validation_errors=list(errs))

    a, b = law("a", 3.0, [0.01, -0.01]), law("b", 3.3, [0.02, 0.02], [3.0, 3.4])  # MSE 1e-4 and 4e-4: weights 0.8, 0.2
    c = law("c", 9.0, [float("nan"), 0.0])
    reg = predict.combine([a, b])
    assert reg["weights"] == pytest.approx(dict(a=0.8, b=0.2)) and reg["loss"] == pytest.approx(3.06)
    assert reg["interval"] == pytest.approx([2.9 * 0.8 + 3.0 * 0.2, 3.1 * 0.8 + 3.4 * 0.2])
    assert reg["validation_errors"] == pytest.approx([0.012, -0.004]) and reg["validation_mae"] == pytest.approx(0.008)
    for order in ([c, a, b], [a, c, b], [a, b, c]):
        assert predict.combine(order)["weights"]["c"] == 0 and predict.combine(order)["loss"] == pytest.approx(3.06)
    assert predict.combine([law("x", 2.0, []), law("y", 4.0, [])])["loss"] == 3.0  # no validation runs: equal weights
    diverged = law("d", float("nan"), [0.0, 0.0], [3.0, float("inf")])  # a perfect validation score, no prediction
    assert predict.combine([a, b, diverged])["weights"]["d"] == 0 and predict.combine([a, b, diverged])["loss"] == pytest.approx(3.06)
    assert predict.combine([law("x", 2.0, []), law("y", float("nan"), [])])["interval"] == [1.9, 2.1]
    with pytest.raises(ValueError, match="finite"):
        predict.combine([c, dict(c, law="other")])
    with pytest.raises(ValueError, match="same validation runs"):
        predict.combine([a, law("short", 3.0, [0.01])])
    old = R.register(tmp_path / "old.json", TARGET, tmp_path / "t", LADDER, {"alternative": {}, "metrics": {}})
    assert old["prediction"]["alternative"] == {}
    with pytest.raises(R.RegistryError, match="before every law"):
        predict.verify_loss(tmp_path / "old.json", tmp_path / "t", tmp_path)
