"""Loading a run for inference: the one place that reads a run directory (`config.json` with defaults for fields
added since it was written, its `tokenizer.json`, its newest checkpoint that verifies) and puts the model on a
device. Sampling, the evals, the engine's callers, the scaling samplers, the server and the benches load runs
through here; nothing here imports the trainer.

    run = runs.load("runs/default/pretrain")          # cuda when present, else cpu
    run.model, run.tok, run.checkpoint_id, run.config["train"]["depth"]
"""
import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from . import checkpoint
from .common import UserError
from .model.gpt import GPT, ModelConfig
from .tokenizer import Tokenizer


class RunError(UserError):
    pass


def default_device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def read_config(run) -> dict:
    """A run's config.json, `train` padded with today's defaults for fields added after the run was written. `model`
    stays as written (ModelConfig fills in defaults when a model is built; identity checks must see what the run
    was trained with). A field the code does not know is an error: that run needs the code that made it."""
    from .config import TrainConfig
    path = Path(run) / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{run} is not a run directory (no config.json)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise RunError(f"{path}: unreadable ({e})") from None
    for key, cls in (("train", TrainConfig), ("model", ModelConfig)):
        if key not in cfg:
            continue
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg[key]) - known)
        if unknown:
            raise RunError(f"{path}: {key} fields {unknown} are unknown to this version of nanogpt4")
        if key == "train":
            cfg[key] = {**cls().to_dict(), **cfg[key]}
    return cfg


def newest_checkpoint(run):
    """The newest checkpoint of a run that verifies (sha256 of every file), or a RunError saying why none does."""
    ckpt, rejected = checkpoint.latest_valid(Path(run) / "ckpt")
    if ckpt is None:
        why = "; ".join(rejected) if rejected else "no checkpoint"
        raise RunError(f"{run}: no usable checkpoint ({why})")
    return ckpt


def pinned_checkpoint(run, sha256):
    """The checkpoint of a run whose weights have this sha256 (a served snapshot pins one), verified; else a
    RunError: a snapshot whose weights changed or vanished is refused, never silently replaced."""
    for path in sorted(Path(run).glob("ckpt/step_*"), reverse=True):
        try:
            if weights_sha256(path) == sha256:
                checkpoint.verify(path)
                return path
        except (OSError, ValueError, KeyError):
            continue
        except checkpoint.CheckpointError as e:
            raise RunError(f"{run}: the checkpoint with weights {sha256[:12]}… is corrupt ({e})") from None
    raise RunError(f"{run}: no checkpoint has weights with sha256 {sha256[:12]}… (the snapshot's checkpoint "
                   "changed or was removed)")


def weights_sha256(ckpt):
    """The sha256 of a checkpoint directory's weights, from its metadata."""
    return json.loads((Path(ckpt) / "meta.json").read_text())["sha256"]["model.safetensors"]


def checkpoint_id(run, ckpt=None):
    """`step_…:<sha256 of the weights>` of checkpoint `ckpt` of a run (default: the one `load` would use): what
    caches of measured results and served snapshots are keyed by, and `Run.checkpoint_id`."""
    ckpt = Path(ckpt) if ckpt is not None else newest_checkpoint(run)
    return f"{ckpt.name}:{weights_sha256(ckpt)}"


@dataclass
class Run:
    path: Path
    config: dict
    model: GPT
    tok: Tokenizer
    checkpoint: Path
    checkpoint_id: str
    device: torch.device
    vision: object = None  # the image encoder of a vision run (model/vision.py), else None


def load(run, device=None, dtype=None, sha256=None) -> Run:
    """A run ready for inference: model in eval mode on `device` (default: cuda when present, else cpu) in
    `dtype` (default: the weights' own, float32), its tokenizer and which checkpoint was loaded: the newest that
    verifies, or the one whose weights have `sha256`."""
    run = Path(run)
    if not run.is_dir():
        raise RunError(f"run directory {run} does not exist")
    cfg = read_config(run)
    if "model" not in cfg:
        raise RunError(f"{run}/config.json has no model config")
    ckpt = newest_checkpoint(run) if sha256 is None else pinned_checkpoint(run, sha256)
    model = GPT(ModelConfig(**cfg["model"]))
    try:
        checkpoint.load(ckpt, model)
    except RuntimeError as e:  # load_state_dict: the weights do not fit the config
        raise RunError(f"{ckpt}: weights do not match {run}/config.json ({str(e).splitlines()[0]})") from None
    tok_path = run / "tokenizer.json"
    if not tok_path.exists():
        raise RunError(f"{run} has no tokenizer.json")
    tok = Tokenizer.load(tok_path)
    if tok.vocab_size > model.cfg.vocab_size:
        raise RunError(f"{tok_path}: {tok.vocab_size} tokens, more than the model's {model.cfg.vocab_size}")
    device = torch.device(device or default_device())
    model = model.to(device=device, dtype=dtype or torch.float32).eval()
    vision = encoder(run, cfg, ckpt.name)
    if vision is not None:
        vision = vision.to(device=device, dtype=dtype or torch.float32)
    return Run(run, cfg, model, tok, ckpt, checkpoint_id(run, ckpt), device, vision)


def encoder(run, cfg, step_name):
    """The image encoder of a vision run (config.json has `encoder`), from vision/<the decoder checkpoint's step>,
    verified; None for a text-only run."""
    if "encoder" not in cfg:
        return None
    from .model.vision import VisionConfig, VisionEncoder
    model = VisionEncoder(VisionConfig(**cfg["encoder"]))
    path = Path(run) / "vision" / step_name
    if not path.is_dir():
        raise RunError(f"{run}: no encoder checkpoint vision/{step_name} beside the decoder's")
    try:
        checkpoint.load(path, model)
    except RuntimeError as e:
        raise RunError(f"{path}: encoder weights do not match {run}/config.json ({str(e).splitlines()[0]})") from None
    return model.eval()
