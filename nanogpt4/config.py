"""The size dial: `depth` alone decides the model and its training hyperparameters, so runs at every scale are
made the same way and are comparable (the report's "predictable scaling" needs exactly that).

Each rule carries its reason. Override any derived value explicitly on the command line if you must; the run
records what was used.
"""
import math
from dataclasses import dataclass, asdict, field

from .model.gpt import ModelConfig
from .perf import training_dtype

ASPECT = 64  # width = 64·depth: nanochat's aspect ratio; Kaplan et al. 2020 find loss flat across aspect ratios 20-200
HEAD_DIM = 64  # fixed head size, so more width means more heads (GPT-2/3 practice); keeps SDPA shapes efficient
BASE_WIDTH = 64  # muP base width: the learning rate below was tuned at width 64 and transfers to every width
BASE_LR = 6e-3  # Adam lr of hidden matrices at the base width; muP scales it by 64/width (swept: bench/lr_sweep.py)
EMBED_LR_MULT = 15.0  # embedding lr = 15·BASE_LR = 0.09: with unit-scale init it needs large steps (swept)
READOUT_LR_MULT = 5.0  # readout lr = 5·BASE_LR = 0.03, before the muP 1/width_mult logit multiplier (swept)
TOKENS_PER_PARAM = 20  # Chinchilla (Hoffmann et al. 2022): compute-optimal horizon ≈ 20 tokens per parameter
TARGET_STEPS = 500  # optimizer steps a run aims for: enough for warmup + decay; batch grows with the horizon instead
# (the critical batch grows with compute, Kaplan et al. 2020), and 32+ sequence batches keep the CPU matmuls efficient


def kv_heads(n_head):
    """Grouped-query attention with groups of two query heads per key/value head where the head count allows."""
    return n_head // 2 if n_head % 2 == 0 else n_head


@dataclass
class TrainConfig:
    depth: int = 4
    width: int = 0  # 0 = ASPECT·depth. The scaling ladder turns the dial below depth 1 by narrowing a 1-layer model
    vocab_size: int = 8192
    seq_len: int = 256
    tokens_per_param: float = TOKENS_PER_PARAM
    lr: float = BASE_LR
    embed_lr_mult: float = EMBED_LR_MULT
    readout_lr_mult: float = READOUT_LR_MULT
    weight_decay: float = 0.1  # GPT-3 / Chinchilla value, applied to matrices only
    beta1: float = 0.9
    beta2: float = 0.95  # GPT-3: 0.95 is more stable than 0.999 for LMs
    grad_clip: float = 1.0  # GPT-3
    warmup_frac: float = 0.02  # short linear warmup: Adam's second moments need a few steps
    cooldown_frac: float = 0.4  # warmup-stable-decay: linear decay to 0 over the last 40% (Hägele et al. 2024; nanochat)
    batch_tokens: int = 0  # 0 = derived from the horizon (see derive)
    micro_batch: int = 64  # sequences per forward/backward; gradient accumulation makes up the rest
    min_batch_seqs: int = 8  # floor of the derived batch: 8+ sequences keep the CPU matmuls efficient
    max_tokens: int = 0  # 0 = derived: tokens_per_param · params
    seed: int = 1337
    eval_every: int = 100
    eval_tokens: int = 65536  # tokens per validation split per evaluation
    ckpt_every: int = 200
    dtype: str = field(default_factory=training_dtype)  # bf16 where the device has bf16 arithmetic (~4x fp32 there,
    # shared/PERF-NOTES.md), float32 where it is emulated (perf.fast_dtype)
    compile: bool = False
    spike_factor: float = 3.0  # loss-spike guard: a step whose loss exceeds this multiple of the running mean is a spike
    extra: dict = field(default_factory=dict)

    def model_config(self) -> ModelConfig:
        width = self.width or ASPECT * self.depth
        n_head = max(1, width // HEAD_DIM)  # narrower than a head: one head as wide as the model
        return ModelConfig(vocab_size=self.vocab_size, n_layer=self.depth, n_embd=width, n_head=n_head,
                           n_kv_head=kv_heads(n_head), seq_len=self.seq_len, base_width=BASE_WIDTH)

    def to_dict(self):
        return asdict(self)

    def identity(self):
        return identity(self.to_dict(), self.model_config().to_dict())


HELP = {  # one line per TrainConfig field: the --help of `nanogpt4 pretrain` (the comments above say why)
    "depth": "the size dial: transformer layers; width, heads, lrs, batch and horizon follow from it",
    "width": "model width (0 = 64·depth)",
    "vocab_size": "vocabulary size (default: the token shards' tokenizer)",
    "seq_len": "context length in tokens",
    "tokens_per_param": "training horizon in tokens per parameter (Chinchilla: 20)",
    "lr": "Adam lr of the hidden matrices at width 64 (muP scales it by 64/width)",
    "embed_lr_mult": "embedding lr as a multiple of --lr",
    "readout_lr_mult": "readout lr as a multiple of --lr",
    "weight_decay": "AdamW weight decay (matrices only)",
    "beta1": "Adam beta1",
    "beta2": "Adam beta2",
    "grad_clip": "clip the gradient norm to this (0 = no clipping)",
    "warmup_frac": "fraction of the steps spent in linear lr warmup",
    "cooldown_frac": "fraction of the steps, at the end, over which the lr decays linearly to 0",
    "batch_tokens": "tokens per optimizer step (0 = derived from the horizon)",
    "micro_batch": "sequences per forward/backward (gradient accumulation makes up the batch)",
    "min_batch_seqs": "floor of the derived batch, in sequences",
    "max_tokens": "training tokens (0 = tokens_per_param · params)",
    "seed": "seed of the initialisation and of every batch",
    "eval_every": "evaluate the validation splits every this many steps",
    "eval_tokens": "tokens per validation split per evaluation",
    "ckpt_every": "checkpoint every this many steps",
    "dtype": f"autocast dtype: bfloat16 or float32 (default here: {training_dtype()}, see perf.fast_dtype)",
    "compile": "torch.compile the model",
    "spike_factor": "a step whose loss exceeds this multiple of the running mean is a spike: roll back, skip it",
}


def identity(train: dict, model: dict) -> dict:
    """What makes two runs the same run, flat: the training config and the model it builds (so a change of the
    architecture in the code, e.g. a new ModelConfig field, is a different run too)."""
    return {**train, **{f"model.{k}": v for k, v in model.items()}}


def count_params(mc: ModelConfig, non_embedding=False):
    """Parameters of the model a config makes, without building it (matches GPT.num_params); `non_embedding`:
    the transformer blocks' only, embedding and readout excluded (Kaplan et al. 2020's N)."""
    d, L, V = mc.n_embd, mc.n_layer, mc.vocab_size
    attn = d * mc.n_head * mc.head_dim * 2 + d * 2 * mc.n_kv_head * mc.head_dim
    mlp = 2 * d * 4 * d
    gates = mc.n_head + (mc.n_kv_head if mc.smear_keys else 0)  # per-head query gains and key-smear mixes
    copy = 2 * d + 4 if mc.copy_head else 0  # the copy head's gate, gate biases and reaches
    return (0 if non_embedding else 2 * V * d) + L * (attn + mlp + gates) + copy


def flops_per_token(mc: ModelConfig, non_embedding=False):
    """Training FLOPs per token, without building the model: the one count (MFU, run compute, the scaling laws).
    6·N for the matmuls (embedding lookup excluded, readout included) plus the attention score/value term
    12·L·T·d (PaLM appendix B; nanoGPT's estimate_mfu), causal half not subtracted. `non_embedding`: Kaplan et
    al. 2020's 6·N with N the transformer blocks' parameters only, embedding and readout excluded — at small
    widths the readout is most of a model's FLOPs but buys little loss."""
    if non_embedding:
        return 6 * count_params(mc, non_embedding=True)
    return 6 * (count_params(mc) - mc.vocab_size * mc.n_embd) + 12 * mc.n_layer * mc.seq_len * mc.n_embd


def train_flops(tc: TrainConfig, non_embedding=False):
    """The compute a run will spend, known before it starts: FLOPs per token × the derived horizon."""
    return flops_per_token(tc.model_config(), non_embedding) * derive(tc)["tokens"]


def derive(tc: TrainConfig) -> dict:
    """Everything derived from the dial: horizon, batch, steps. Parameters for the horizon count every weight
    (embedding and readout included), as Chinchilla does."""
    mc = tc.model_config()
    n = count_params(mc)
    tokens = tc.max_tokens or int(tc.tokens_per_param * n)
    seq_tokens = tc.seq_len
    if tc.batch_tokens:
        batch = tc.batch_tokens
    else:  # a power of two near tokens/TARGET_STEPS, at least min_batch_seqs, at most 512K tokens (GPT-3's small-model batch)
        floor = tc.min_batch_seqs * seq_tokens
        batch = min(max(2 ** round(math.log2(max(tokens / TARGET_STEPS, floor))), floor), 2 ** 19)
    batch_seqs = max(1, batch // seq_tokens)
    steps = max(1, tokens // (batch_seqs * seq_tokens))
    return dict(params=n, tokens=steps * batch_seqs * seq_tokens, batch_seqs=batch_seqs, steps=steps,
                warmup_steps=max(1, round(tc.warmup_frac * steps)),
                cooldown_steps=max(1, round(tc.cooldown_frac * steps)))


def lr_factor(step, d):
    """Warmup-stable-decay multiplier in [0, 1] for optimizer step `step` (0-based)."""
    if step < d["warmup_steps"]:
        return (step + 1) / d["warmup_steps"]
    decay_start = d["steps"] - d["cooldown_steps"]
    if step < decay_start:
        return 1.0
    return max(0.0, (d["steps"] - step) / d["cooldown_steps"])
