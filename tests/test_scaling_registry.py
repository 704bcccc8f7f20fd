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


def test_both_laws_registered_verified_and_drawn(tmp_path):
    """register_loss on a grid drawn from a known L(N, D): the primary law (L(N, D)) recovers the target's loss, the
    report's a·C^b + c is registered beside it, verification reads both back and Figure 1 is drawn."""
    from nanogpt4 import config as C
    from nanogpt4.scaling import ladder as L, laws, predict
    preset = L.PRESETS["cpu"]
    true = laws.ParamTokenFit(E=1.5, A=1.0, alpha=0.3, B=2.0, beta=0.3, n_ref=1e6, d_ref=1e7)
    rows = []
    for tc in L.fit_configs(preset):
        compute, n, d = predict.size(tc)
        loss = float(true.predict(n, d))
        rows.append(dict(name=L.name(tc), tokens_per_param=tc.tokens_per_param,
                         compute=compute, non_embedding_params=n, tokens=d, final=dict(heldout_code=loss, val_text=loss),
                         config_hash=R.config_hash(tc.identity())))
    target = L.target_config(preset)
    record = predict.register_loss(tmp_path / "rec.json", target, tmp_path / "base", rows, curve=L.target_line(preset),
                                   n_boot=50)
    compute, n, d = predict.size(target)
    want = float(true.predict(n, d))
    for m, p in record["prediction"]["metrics"].items():
        assert p["law"] == "L(N,D)" and abs(p["loss"] / want - 1) < 0.01
        assert record["prediction"]["alternative"][m]["law"] == "a*C^b+c"
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text(json.dumps(dict(train=target.to_dict(),
                                                                   model=target.model_config().to_dict())))
    (tmp_path / "base" / "done.json").write_text(json.dumps(dict(flops=compute, final=dict(heldout_code=want,
                                                                                           val_text=want))))
    res = predict.verify_loss(tmp_path / "rec.json", tmp_path / "base", tmp_path)
    for m, v in res["metrics"].items():
        assert abs(v["rel_error"]) < 0.01 and v["law"] == "L(N,D)" and "rel_error" in v["alternative"]
        assert (tmp_path / f"fig1_{m}.png").stat().st_size > 10_000
