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
