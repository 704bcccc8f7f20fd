"""Checkpoints that cannot be half-written: safetensors weights + optimizer state + JSON metadata with sha256s,
assembled in a temporary directory and renamed into place; `latest` names the newest complete one."""
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file, load_file

from .common import UserError, sha256_file, atomic_write_text


class CheckpointError(UserError, RuntimeError):
    pass


def _optim_tensors(opt):
    """Flatten an optimizer's per-parameter state into name→tensor (safetensors holds only tensors)."""
    tensors, scalars = {}, {}
    for idx, state in opt.state_dict()["state"].items():
        for key, val in state.items():
            if torch.is_tensor(val):
                tensors[f"{idx}.{key}"] = val.contiguous()
            else:
                scalars[f"{idx}.{key}"] = val
    return tensors, scalars


def save(ckpt_root, model, opt, meta):
    """Write ckpt_root/step_XXXXXXX/ atomically and point ckpt_root/latest at it. Returns the directory."""
    ckpt_root = Path(ckpt_root)
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = f"step_{meta['step']:07d}"
    tmp = Path(tempfile.mkdtemp(dir=ckpt_root, prefix=f".{name}."))
    try:
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, tmp / "model.safetensors")
        files = ["model.safetensors"]
        if opt is not None:
            tensors, scalars = _optim_tensors(opt)
            save_file(tensors, tmp / "optim.safetensors")
            files.append("optim.safetensors")
            groups = [{k: v for k, v in g.items() if k != "params"} | {"params": g["params"]}
                      for g in opt.state_dict()["param_groups"]]
            meta = dict(meta, optim_scalars=scalars, optim_groups=groups)
        meta = dict(meta, sha256={f: sha256_file(tmp / f) for f in files})
        with open(tmp / "meta.json", "w") as f:
            json.dump(meta, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        final = ckpt_root / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(ckpt_root / "latest", name + "\n")
    return final


def latest(ckpt_root):
    """The newest complete checkpoint directory, or None."""
    ptr = Path(ckpt_root) / "latest"
    if not ptr.exists():
        return None
    path = Path(ckpt_root) / ptr.read_text().strip()
    return path if path.exists() else None


def prune(ckpt_root, keep=2):
    """Delete all but the newest `keep` checkpoints (never the one `latest` names)."""
    cur = latest(ckpt_root)
    dirs = sorted(p for p in Path(ckpt_root).glob("step_*") if p.is_dir())
    for p in dirs[:-keep]:
        if p != cur:
            shutil.rmtree(p, ignore_errors=True)


def verify(path):
    """The metadata of checkpoint `path` once every file matches its sha256; else a CheckpointError."""
    path = Path(path)
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path}: unreadable meta.json ({e}); refusing to load") from e
    for f, digest in meta.get("sha256", {}).items():
        if not (path / f).exists():
            raise CheckpointError(f"checkpoint {path}: {f} is missing; refusing to load")
        if sha256_file(path / f) != digest:
            raise CheckpointError(f"checkpoint {path}: {f} is corrupt or truncated (sha256 mismatch); refusing to load")
    return meta


def latest_valid(ckpt_root):
    """(the newest checkpoint that verifies, or None; the errors of the newer ones that do not)."""
    rejected = []
    for path in sorted((p for p in Path(ckpt_root).glob("step_*") if p.is_dir()), reverse=True):
        try:
            verify(path)
            return path, rejected
        except CheckpointError as e:
            rejected.append(str(e))
    return None, rejected


def load(path, model=None, opt=None):
    """Verify every file's sha256 and load weights (and optimizer state) in place. Returns the metadata."""
    path = Path(path)
    meta = verify(path)
    if model is not None:
        model.load_state_dict(load_file(path / "model.safetensors"))
    if opt is not None:
        tensors = load_file(path / "optim.safetensors")
        state = {}
        for key, val in list(tensors.items()) + list(meta["optim_scalars"].items()):
            idx, name = key.split(".", 1)
            state.setdefault(int(idx), {})[name] = val
        opt.load_state_dict({"state": state, "param_groups": meta["optim_groups"]})
    return meta

