"""Served models as at GPT-4's launch: dated snapshots pinned to a checkpoint (`gpt-4-0314` → `nano4-20261201`),
aliases that follow the recommended snapshot (`gpt-4` → `nano4`), a context length, prices per 1K tokens and a
deprecation date per snapshot. The models file (YAML):

    snapshots:
      nano4-20261201:
        run: runs/default/pretrain
        checkpoint_sha256: 68c633f5…            # the weights' sha256 (meta.json of the checkpoint)
        context_length: 256                      # optional: at most the model's own
        prices: {prompt: 0.03, completion: 0.06} # USD per 1K tokens (the launch's defaults)
        deprecated_after: 2027-06-01             # optional: afterwards the snapshot answers with an error
    aliases:
      nano4: nano4-20261201

A snapshot whose checkpoint no longer has that hash is refused at start (runs.pinned_checkpoint).
"""
import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..common import UserError, atomic_write_text
from ..runs import newest_checkpoint, weights_sha256

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
DEFAULT_PRICES = dict(prompt=0.03, completion=0.06)  # GPT-4 8K at launch, USD per 1K tokens


class ModelsError(UserError, ValueError):
    pass


@dataclass
class Snapshot:
    name: str
    run: Path
    checkpoint_sha256: str
    context_length: int = None
    prices: dict = field(default_factory=lambda: dict(DEFAULT_PRICES))
    deprecated_after: dt.date = None
    created: int = 0  # unix time of the snapshot's date (its name's yyyymmdd when it has one)

    def deprecated(self, today=None):
        return self.deprecated_after is not None and (today or dt.date.today()) > self.deprecated_after


@dataclass
class Models:
    snapshots: dict  # name → Snapshot
    aliases: dict  # alias → snapshot name

    def resolve(self, name):
        """The Snapshot a requested model name means (an alias follows its snapshot), or None."""
        return self.snapshots.get(self.aliases.get(name, name))

    def names(self):
        return sorted(self.snapshots) + sorted(self.aliases)


def _date(value, where):
    if value is None or isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise ModelsError(f"{where}: not a date (YYYY-MM-DD): {value!r}") from None


def parse(cfg, base=Path(".")):
    """Models from the models file's contents (a dict); runs are relative to `base`. Every error names its key."""
    if not isinstance(cfg, dict) or not isinstance(cfg.get("snapshots"), dict) or not cfg["snapshots"]:
        raise ModelsError("the models file needs a non-empty 'snapshots' mapping")
    unknown = set(cfg) - {"snapshots", "aliases"}
    if unknown:
        raise ModelsError(f"unknown keys in the models file: {sorted(unknown)}")
    snaps = {}
    for name, s in cfg["snapshots"].items():
        where = f"snapshots.{name}"
        if not NAME.match(str(name)):
            raise ModelsError(f"{where}: a model name is 1-64 lowercase letters, digits, '.', '_' or '-'")
        if not isinstance(s, dict) or not {"run", "checkpoint_sha256"} <= set(s):
            raise ModelsError(f"{where}: needs 'run' and 'checkpoint_sha256'")
        extra = set(s) - {"run", "checkpoint_sha256", "context_length", "prices", "deprecated_after"}
        if extra:
            raise ModelsError(f"{where}: unknown keys {sorted(extra)}")
        prices = {**DEFAULT_PRICES, **(s.get("prices") or {})}
        if set(prices) != set(DEFAULT_PRICES) or any(not isinstance(v, (int, float)) or v < 0 for v in prices.values()):
            raise ModelsError(f"{where}.prices: needs non-negative 'prompt' and 'completion' (USD per 1K tokens)")
        ctx = s.get("context_length")
        if ctx is not None and (not isinstance(ctx, int) or ctx < 2):
            raise ModelsError(f"{where}.context_length: a positive integer")
        m = re.search(r"(\d{8})$", str(name))
        created = dt.datetime.strptime(m.group(1), "%Y%m%d").replace(tzinfo=dt.timezone.utc).timestamp() if m else 0
        snaps[name] = Snapshot(str(name), (base / s["run"]).resolve(), str(s["checkpoint_sha256"]), ctx, prices,
                               _date(s.get("deprecated_after"), f"{where}.deprecated_after"), int(created))
    aliases = dict(cfg.get("aliases") or {})
    for alias, target in aliases.items():
        if target not in snaps:
            raise ModelsError(f"aliases.{alias}: {target!r} is not a snapshot")
        if alias in snaps or not NAME.match(str(alias)):
            raise ModelsError(f"aliases.{alias}: must be a valid name that is not also a snapshot")
    return Models(snaps, aliases)


def load(path):
    path = Path(path)
    try:
        cfg = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ModelsError(f"models file {path} does not exist") from None
    except yaml.YAMLError as e:
        raise ModelsError(f"{path}: not valid YAML ({e})") from None
    return parse(cfg, path.parent)


def write(path, run_dirs, aliases, today=None, settings=None):
    """A models file pinning each run's newest checkpoint as the snapshot `<name>-<yyyymmdd>` (run_dirs: name → run
    directory), with `aliases` (alias → name) and per-name `settings` (e.g. prices: the 32K model cost twice the 8K
    one); checked by parsing it back, written atomically. Returns Models."""
    date, settings = (today or dt.date.today()).strftime("%Y%m%d"), settings or {}
    cfg = {"snapshots": {f"{name}-{date}": {"run": str(Path(run).resolve()),
                                            "checkpoint_sha256": weights_sha256(newest_checkpoint(run)),
                                            **settings.get(name, {})}
                         for name, run in run_dirs.items()},
           "aliases": {alias: f"{name}-{date}" for alias, name in aliases.items()}}
    models = parse(cfg)
    atomic_write_text(path, yaml.safe_dump(cfg, sort_keys=False))
    return models


def for_run(run, alias="nano4", today=None):
    """Models serving one run's newest checkpoint as today's snapshot `nano4-<yyyymmdd>` with alias `nano4`."""
    sha = weights_sha256(newest_checkpoint(run))
    name = f"{alias}-{(today or dt.date.today()).strftime('%Y%m%d')}"
    return parse({"snapshots": {name: {"run": str(Path(run).resolve()), "checkpoint_sha256": sha}},
                  "aliases": {alias: name}})
