"""Hardware facts: the machine's achievable matmul peak for MFU, measured (not read off a datasheet) and cached
per machine, dtype and thread count; and the training dtype the machine runs fast."""
import json
import os
import platform
import time

import torch

from .common import cache_dir, atomic_write_json


def _cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def device_key(device, dtype):
    dev = torch.cuda.get_device_name() if device.type == "cuda" else _cpu_name()
    return f"{dev}|{dtype}|threads={torch.get_num_threads()}|torch={torch.__version__}"


def measure_matmul_peak(device=torch.device("cpu"), dtype=torch.bfloat16, n=None, seconds=1.0):
    """Best GFLOP/s of square n×n matmuls (n=2048 on CPU, 8192 on GPU) over ~`seconds`: other processes can only
    slow a matmul down, and a peak measured on a busy machine would be cached and inflate every later MFU."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):
        a @ b
    sync()
    rates, t_end = [], time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(rates) < 3:
        t = time.perf_counter()
        a @ b
        sync()
        rates.append(2 * n ** 3 / (time.perf_counter() - t) / 1e9)
    return max(rates)


def matmul_peak(device=torch.device("cpu"), dtype=torch.bfloat16, refresh=False):
    """Cached measured peak in GFLOP/s for this machine; measured on first use."""
    path = cache_dir() / "peaks.json"
    key = device_key(device, dtype)
    peaks = {}
    if path.exists():
        try:
            peaks = json.loads(path.read_text())
        except json.JSONDecodeError:
            peaks = {}
    if refresh or key not in peaks:
        peaks[key] = measure_matmul_peak(device, dtype)
        atomic_write_json(path, peaks)
    return peaks[key]


def fast_dtype(device="cpu"):
    """The autocast dtype training and evaluation default to on `device`: bfloat16 on a GPU (Ampere and later have
    bf16 arithmetic; pass --dtype float32 on older ones) and on CPUs with bf16 arithmetic (AVX512-BF16 or AMX),
    float32 on other CPUs, where bf16 is emulated and slow: on a Xeon without either, a 2048³ bf16 matmul ran at
    60 GFLOP/s against 262 in float32 and training ran 2.2× faster in float32 (NOTES.md, 2026-12-04 evening).
    NANOGPT4_DTYPE=bfloat16|float32 overrides the choice (e.g. to continue a job begun in the other dtype: the
    dtype is part of a run's config, and a run refuses to resume in another)."""
    forced = os.environ.get("NANOGPT4_DTYPE")
    if forced:
        if forced not in ("bfloat16", "float32"):
            raise ValueError(f"NANOGPT4_DTYPE={forced!r}: expected bfloat16 or float32")
        return forced
    if torch.device(device).type == "cuda":
        return "bfloat16"  # asks nothing of the GPU: a query here would open a CUDA context in every DDP rank
    native = [getattr(torch.cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return "bfloat16" if any(native) else "float32"


def resume_hint(was, now):
    """What a refusal to resume a run begun in another dtype adds: how to continue it anyway."""
    return (f" (or set NANOGPT4_DTYPE={was} to continue it in the dtype it began in: the default follows the machine, "
            f"perf.fast_dtype)" if was and was != now else "")


def training_dtype():
    """The default of a pretraining run: fast_dtype of the device `pretrain` trains on (a GPU when there is one)."""
    return fast_dtype("cuda" if torch.cuda.is_available() else "cpu")


CPU_DTYPE = fast_dtype("cpu")  # the trainers that run on the CPU (post-training, vision, long context) and evals
