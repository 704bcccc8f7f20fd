"""The scaling ladder: small runs and one target run, all made by the size dial with one methodology.

Every rung is `TrainConfig(width=w)` with the preset's vocabulary, horizon (tokens per parameter) and seed; nothing
else is set per rung: depth follows from the width (64 per layer, at least one layer), heads, learning rates (muP),
batch, schedule and horizon follow from config.py exactly as for the main model. Below one layer the dial narrows a
one-layer model, which is how the ladder reaches 10^4× less compute than the target on a CPU.

Parameters and compute. The horizon counts every parameter, embedding and readout included (Chinchilla); compute
is counted by the code as 6·N·D with N excluding only the embedding lookup (the readout is a matmul), plus the
attention term 12·L·T·d per token (config.flops_per_token), and is known before a run starts (config.train_flops).
The ladder trains its own small-vocabulary tokenizer (1024 tokens on the CPU preset): with GPT-4's 100k or even our
8k vocabulary the output layer would be nearly all of a 16-wide model's parameters and compute.

Runs are resumable and skipped when complete: a run directory holds one config (pretrain.record_config refuses
another), so a killed ladder re-run continues where it stopped.
"""
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from .. import config as C
from ..runs import read_config
from ..train import pretrain
from .registry import config_hash


@dataclass(frozen=True)
class Preset:
    vocab_size: int
    tokens_per_param: float
    fit_widths: tuple  # the small runs the loss laws are fitted on
    target_width: int  # the run whose loss is predicted before it starts
    cap_widths: tuple = ()  # runs the capability law is fitted on: bigger (tiny models pass no problem), one seed
    min_depth: int = 1  # layers of the narrowest models (see rung)
    seeds: tuple = (1337,)  # small runs are repeated over these seeds (cheap; averages out init/data noise)
    eval_tokens: int = 2 ** 17  # fixed held-out windows for the final loss, the same in every run
    max_fit_fraction: float = 1e-3  # a fit run may use at most this fraction of the target's compute
    train: dict = field(default_factory=dict)  # TrainConfig fields shared by every rung (dtype, seq_len, …)
    capability: dict = field(default_factory=dict)  # capability.measure settings of the pass-rate law (n samples, …)
    humaneval: dict = field(default_factory=dict)  # the same for the real HumanEval on the target


PRESETS = {
    "cpu": Preset(vocab_size=1024, tokens_per_param=2, fit_widths=(16, 20, 24, 28, 32, 40, 48, 56),
                  target_width=320, cap_widths=(128, 192, 256), min_depth=2, seeds=(1337, 1338, 1339),
                  capability=dict(n=100), humaneval=dict(n=10, max_new_tokens=128)),
    "quick": Preset(vocab_size=512, tokens_per_param=1, fit_widths=(8, 12, 16, 20), target_width=64, cap_widths=(24, 32),
                    max_fit_fraction=0.05, eval_tokens=2 ** 14, train=dict(seq_len=64, dtype="float32"),
                    capability=dict(n=4, max_new_tokens=16), humaneval=dict(n=1, max_new_tokens=8)),
    "gpu": Preset(vocab_size=8192, tokens_per_param=20, fit_widths=(32, 48, 64, 96, 128, 160), min_depth=2,
                  target_width=768, cap_widths=(192, 256, 384, 512), train=dict(seq_len=1024, micro_batch=32),
                  capability=dict(n=200), humaneval=dict(n=20, max_new_tokens=256)),
}


def rung(preset: Preset, width: int, seed: int) -> C.TrainConfig:
    """The training config of one rung: the dial (width) and the preset's shared settings, nothing else. Depth is
    width/64 but at least min_depth: a one-layer model cannot form induction heads (in-context copying, which code
    rewards) and falls off the trend (Kaplan et al. 2020, fig. 5; our pilot runs in NOTES.md)."""
    tc = C.TrainConfig(depth=max(preset.min_depth, round(width / C.ASPECT)), width=width, vocab_size=preset.vocab_size,
                       tokens_per_param=preset.tokens_per_param, seed=seed, eval_tokens=preset.eval_tokens,
                       min_batch_seqs=4, **preset.train)  # ≥4 windows a step: the code/prose mix of a batch varies less
    # Housekeeping that does not change the trained weights: the final evaluation only (the held-out windows cost
    # more than a tiny run's training), compile only where the 20-30 s compile pays for itself.
    steps = C.derive(tc)["steps"]
    return replace(tc, eval_every=steps, ckpt_every=max(1, steps // 2), compile=tc.compile or C.train_flops(tc) > 1e14)


def name(tc: C.TrainConfig) -> str:
    return f"w{tc.width}_s{tc.seed}"


def fit_configs(preset: Preset):
    return [rung(preset, w, s) for w in preset.fit_widths for s in preset.seeds]


def cap_configs(preset: Preset):
    return [rung(preset, w, preset.seeds[0]) for w in preset.cap_widths]


def target_config(preset: Preset):
    return rung(preset, preset.target_width, preset.seeds[0])


def check_preset(preset: Preset):
    """The fit runs must all be at most max_fit_fraction of the target's compute."""
    target = C.train_flops(target_config(preset))
    for tc in fit_configs(preset):
        if C.train_flops(tc) > preset.max_fit_fraction * target:
            raise ValueError(f"fit run width {tc.width} uses {C.train_flops(tc) / target:.2e} of the target's compute "
                             f"(at most {preset.max_fit_fraction:g} allowed)")


def finished(tc: C.TrainConfig, run: Path):
    """The run's done.json when `run` holds the finished run of exactly this config and model, else None."""
    run = Path(run)
    if not (run / "done.json").exists():
        return None
    cfg = read_config(run)
    if C.identity(cfg["train"], cfg["model"]) != tc.identity():
        return None  # resuming it then refuses the changed config (pretrain.record_config) instead of mixing runs
    return json.loads((run / "done.json").read_text())


def train_run(tc: C.TrainConfig, run: Path, tokens_dir, quiet=True):
    """Train one rung, or skip it when its directory already holds the finished run of this config."""
    done = finished(tc, run)
    if done is None:
        pretrain.train(tc, run, tokens_dir, resume=True, quiet=quiet)
        done = json.loads((Path(run) / "done.json").read_text())
    return done


def row(tc: C.TrainConfig, run: Path, done: dict):
    """What the fits need of a finished run."""
    return dict(name=name(tc), run=str(run), width=tc.width, depth=tc.depth, seed=tc.seed, params=done["params"],
                tokens=done["tokens"], compute=done["flops"], non_embedding_compute=C.train_flops(tc, non_embedding=True),
                final=done["final"], config_hash=config_hash(tc.identity()))


def run_ladder(out, tokens_dir, configs, quiet=True):
    """Train every run of `configs` (skipping finished ones); returns their rows, smallest first."""
    out = Path(out)
    rows = []
    for tc in sorted(configs, key=C.train_flops):
        run = out / "ladder" / name(tc)
        done = train_run(tc, run, tokens_dir, quiet)
        rows.append(row(tc, run, done))
        print(f"  {rows[-1]['name']}: {done['params'] / 1e3:.0f}K params, {done['flops']:.2e} FLOPs, "
              + "  ".join(f"{k} {v:.4f}" for k, v in done["final"].items()), flush=True)
    return rows
