"""Registered predictions: a record of what the small runs predict for a target run, written before the target
starts, sealed with its own sha256 and made read-only; verification refuses a target whose config differs from the
registered one, and a record whose hash no longer matches."""
import hashlib
import json
import os
import time
from pathlib import Path

from ..common import UserError, atomic_write_json, git_commit


class RegistryError(UserError, ValueError):
    pass


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def config_hash(run_identity: dict):
    """sha256 of a run's canonical identity (config.identity: training config + the model it builds)."""
    return hashlib.sha256(canonical(run_identity).encode()).hexdigest()


def seal(record: dict):
    body = {k: v for k, v in record.items() if k != "record_sha256"}
    return dict(body, record_sha256=hashlib.sha256(canonical(body).encode()).hexdigest())


def register(path, target_config: dict, target_run, ladder_runs, prediction: dict):
    """Write the prediction record for the target (config dict + run directory) from `ladder_runs` (dicts with at
    least config_hash, compute, and the fitted metric). Refused when the record exists, when the target run has
    started, or when a ladder run is the target itself."""
    path, target_run = Path(path), Path(target_run)
    if path.exists():
        raise RegistryError(f"{path} exists: a registered prediction is never overwritten")
    if (target_run / "metrics.jsonl").exists() or (target_run / "ckpt").exists():
        raise RegistryError(f"target {target_run} has already started: a prediction must be registered before it trains")
    h = config_hash(target_config)
    if any(r["config_hash"] == h for r in ladder_runs):
        raise RegistryError("a ladder run has the target's config: the fit may not use any result of the target")
    record = seal(dict(created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), git_commit=git_commit(), target_config=target_config,
                       target_config_hash=h, target_run=str(target_run), ladder_runs=ladder_runs, prediction=prediction))
    atomic_write_json(path, record)
    os.chmod(path, 0o444)
    return record


def load(path):
    """A registered record, its seal checked."""
    record = json.loads(Path(path).read_text())
    if seal(record)["record_sha256"] != record.get("record_sha256"):
        raise RegistryError(f"{path}: the record does not match its sha256; it was changed after registration")
    return record


def check_target(record, target_config: dict):
    """Refuse verification against a target that is not the registered one."""
    if config_hash(target_config) != record["target_config_hash"]:
        diff = {k: (record["target_config"].get(k), v) for k, v in target_config.items()
                if record["target_config"].get(k) != v}
        raise RegistryError(f"the target's config differs from the registered one: {diff}")
