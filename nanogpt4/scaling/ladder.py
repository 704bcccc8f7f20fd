"""The scaling ladder: small runs and the base model, all made by the size dial with one methodology.

Every run is `TrainConfig(width=w, tokens_per_param=r)` with the preset's vocabulary and seed; nothing else is set
per run: depth follows from the width (64 per layer, at least `min_depth` layers; the capability runs take the
target's), heads, learning rates (muP),
batch and schedule follow from config.py exactly as for any model. Below one layer the dial narrows a small model,
which is how the ladder reaches 100-10^4× less compute than the target on a CPU. The small runs form a grid of
widths and horizons (tokens per parameter), so that a law in parameters and tokens, L(N, D), can be fitted as well
as the report's one line through compute.

The target is the main job's base model: the run whose loss is registered before it starts, then post-trained and
served. Ladder and base model share the main tokenizer (one vocabulary: a loss in nats per token is only
comparable within one tokenizer).

Parameters and compute. The horizon counts every parameter, embedding and readout included (Chinchilla); compute
is counted by the code as 6·N·D with N excluding only the embedding lookup (the readout is a matmul), plus the
attention term 12·L·T·d per token (config.flops_per_token), and is known before a run starts (config.train_flops).

Runs are resumable and skipped when complete: a run directory holds one config (pretrain.record_config refuses
another), so a killed ladder re-run continues where it stopped.
"""
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from .. import config as C
from ..common import atomic_write_json, sha256_file
from ..runs import read_config
from ..train import pretrain
from .registry import config_hash


@dataclass(frozen=True)
class Preset:
    vocab_size: int  # the main tokenizer's vocabulary, shared by every run
    target_width: int  # the base model: the run whose loss is predicted before it starts
    target_tokens_per_param: float  # the base model's horizon
    fit_grid: tuple  # (width, tokens per parameter) of each small run the loss laws are fitted on
    cap_widths: tuple = ()  # runs the capability law is fitted on (at the target's horizon, one seed): bigger,
    # since tiny models pass no problem. They are also the validation runs that weight the loss laws (predict.RULE)
    cap_at_target_depth: bool = True  # capability runs with the target's layers: they then differ from the target
    # only in width, and the validation sees what depth adds that laws fitted on shallower runs miss (NOTES.md,
    # 2026-12-05 afternoon)
    min_depth: int = 1  # layers of the narrowest models (see rung)
    seeds: tuple = (1337,)  # small runs are repeated over these seeds (averages out init/data noise)
    eval_tokens: int = 2 ** 17  # fixed held-out windows for the final loss, the same in every run
    max_fit_fraction: float = 1e-2  # a fit run may use at most this fraction of the target's compute
    train: dict = field(default_factory=dict)  # TrainConfig fields shared by every run (dtype, seq_len, …)
    capability: dict = field(default_factory=dict)  # capability.measure settings of the pass-rate law (n samples, …)
    problem_variants: int = 2  # instances of each capability problem template (capability.build_problems)
    humaneval: dict = field(default_factory=dict)  # the same for the real HumanEval on the target


PRESETS = {
    "cpu": Preset(vocab_size=4096, target_width=256, target_tokens_per_param=2, min_depth=2,
                  fit_grid=((16, 4), (24, 4), (32, 4), (40, 4), (48, 2), (16, 8), (24, 8), (32, 8)),
                  cap_widths=(80, 96, 128), seeds=(1337,), capability=dict(n=50), problem_variants=12,
                  humaneval=dict(n=5, max_new_tokens=128)),
    # long: the second attempt at the 1% bar (NOTES.md, 2026-12-06 morning). The first (f78fc0f, results/long-preset)
    # fitted 2-layer runs to a 6-layer target and over-predicted its text loss by 8%; here every run has the
    # target's 6 layers, so the ladder differs from the target only in width and horizon (the muP dial), and the
    # target trains 4 tokens per parameter, a run nobody has seen.
    "long": Preset(vocab_size=4096, target_width=384, target_tokens_per_param=4, min_depth=6, max_fit_fraction=1e-3,
                   fit_grid=((16, 4), (24, 4), (32, 4), (16, 8), (24, 8), (16, 16), (32, 2), (40, 2), (48, 2), (64, 1)),
                   cap_widths=(128, 192, 256), seeds=(1337, 1338, 1339), capability=dict(n=100), problem_variants=12,
                   humaneval=dict(n=10, max_new_tokens=128)),
    "tiny": Preset(vocab_size=512, target_width=64, target_tokens_per_param=1, max_fit_fraction=0.05,
                    fit_grid=((8, 1), (12, 1), (16, 1), (8, 2), (12, 2)), cap_widths=(24, 32), eval_tokens=2 ** 14,
                    train=dict(dtype="float32"), capability=dict(n=4, max_new_tokens=16),
                    humaneval=dict(n=1, max_new_tokens=8)),
    "gpu": Preset(vocab_size=8192, target_width=768, target_tokens_per_param=20, min_depth=2,
                  fit_grid=tuple((w, r) for w in (32, 48, 64, 96, 128, 160) for r in (10, 20))
                  + ((32, 40), (48, 40), (64, 40), (96, 40)),
                  cap_widths=(192, 256, 384, 512), max_fit_fraction=1e-3, train=dict(seq_len=1024, micro_batch=32),
                  capability=dict(n=200), humaneval=dict(n=20, max_new_tokens=256)),
}


def rung(preset: Preset, width: int, tokens_per_param: float, seed: int) -> C.TrainConfig:
    """The training config of one run: the dial (width), its horizon and the preset's shared settings, nothing
    else. Depth is width/64 but at least min_depth: a one-layer model cannot form induction heads (in-context
    copying, which code rewards) and falls off the trend (Kaplan et al. 2020, fig. 5; our pilot runs in NOTES.md)."""
    tc = C.TrainConfig(depth=max(preset.min_depth, round(width / C.ASPECT)), width=width, vocab_size=preset.vocab_size,
                       tokens_per_param=tokens_per_param, seed=seed, eval_tokens=preset.eval_tokens,
                       min_batch_seqs=4, **preset.train)  # ≥4 windows a step: the code/prose mix of a batch varies less
    # Housekeeping that does not change the trained weights: the final evaluation only (the held-out windows cost
    # more than a tiny run's training), compile only where the 20-30 s compile pays for itself.
    steps = C.derive(tc)["steps"]
    return replace(tc, eval_every=steps, ckpt_every=max(1, steps // 2), compile=tc.compile or C.train_flops(tc) > 1e14)


def name(tc: C.TrainConfig) -> str:
    return f"w{tc.width}_r{tc.tokens_per_param:g}_s{tc.seed}"


def fit_configs(preset: Preset):
    return [rung(preset, w, r, s) for w, r in preset.fit_grid for s in preset.seeds]


def cap_configs(preset: Preset):
    """The capability (and validation) runs: the target's horizon, the first seed and, with cap_at_target_depth,
    the target's depth."""
    if preset.cap_at_target_depth:
        preset = replace(preset, min_depth=target_config(preset).depth)
    return [rung(preset, w, preset.target_tokens_per_param, preset.seeds[0]) for w in preset.cap_widths]


def target_config(preset: Preset):
    """The base model: a rung, checkpointed at least every 200 steps (the long preset's runs for hours)."""
    tc = rung(preset, preset.target_width, preset.target_tokens_per_param, preset.seeds[0])
    return replace(tc, ckpt_every=min(tc.ckpt_every, 200))


def target_line(preset: Preset, points=24):
    """Configs at the target's horizon from the narrowest fit width to the target's: where Figure 1 draws L(N, D)."""
    lo = min(w for w, _ in preset.fit_grid)  # widths in steps of 8, a head layout the model accepts
    widths = sorted({8 * round(lo * (preset.target_width / lo) ** (i / (points - 1)) / 8) for i in range(points)})
    return [rung(preset, w, preset.target_tokens_per_param, preset.seeds[0]) for w in widths]


def check_preset(preset: Preset):
    """The fit runs must all be at most max_fit_fraction of the target's compute."""
    target = C.train_flops(target_config(preset))
    for tc in fit_configs(preset):
        if C.train_flops(tc) > preset.max_fit_fraction * target:
            raise ValueError(f"fit run {name(tc)} uses {C.train_flops(tc) / target:.2e} of the target's compute "
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


def copying(run, n_tokens=2 ** 16):
    """In-context learning score of a finished run on held-out code: mean loss at the first 8 positions minus
    that over the last five eighths of the window (positions 96-255 of 256; Olsson et al. 2022). A run that copies from its context scores ~1 or more;
    below the copying switch a run scores ~0.5 (NOTES.md, 2026-11-25). Kept in the run's copying.json beside the
    sha256 of the done.json it measured, so listing a finished ladder again measures nothing."""
    from ..data import shards
    from ..runs import load
    cache, done = Path(run) / "copying.json", sha256_file(Path(run) / "done.json")
    key = dict(done_sha256=done, n_tokens=n_tokens)
    if cache.exists() and (kept := json.loads(cache.read_text()))["key"] == key:
        return kept["score"]
    loaded = load(run, "cpu")
    T = loaded.model.cfg.seq_len
    per_pos = pretrain.loss_by_position(loaded.model, *pretrain.eval_windows(
        shards.load(loaded.config["tokens_dir"], "heldout_code"), T, n_tokens))
    score = float(per_pos[:8].mean() - per_pos[3 * T // 8:].mean())
    atomic_write_json(cache, dict(key=key, score=score))
    return score


def row(tc: C.TrainConfig, run: Path, done: dict):
    """What the fits need of a finished run, and its in-context learning score (`copying`)."""
    return dict(name=name(tc), run=str(run), width=tc.width, depth=tc.depth, seed=tc.seed,
                tokens_per_param=tc.tokens_per_param, params=done["params"],
                non_embedding_params=C.count_params(tc.model_config(), non_embedding=True),
                tokens=done["tokens"], compute=done["flops"], non_embedding_compute=C.train_flops(tc, non_embedding=True),
                final=done["final"], icl=copying(run), config_hash=config_hash(tc.identity()))


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
