"""Hardware facts: the machine's achievable matmul peak for MFU, measured (not read off a datasheet) and cached
per machine, dtype and thread count; and the training dtype the machine runs fast."""
import json
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


def fast_dtype():
    """The autocast dtype training and evaluation default to: bfloat16 on a GPU that has it and on CPUs with bf16
    arithmetic (AVX512-BF16 or AMX), float32 elsewhere. Where bf16 is emulated it is the slow choice: on a Xeon
    without either, a 2048³ bf16 matmul ran at 60 GFLOP/s against 262 in float32 (NOTES.md, 2026-12-04). The
    choice is recorded in each run's config, so a run resumes in the dtype it started in."""
    if torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    native = [getattr(torch.cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return "bfloat16" if any(native) else "float32"


FAST_DTYPE = fast_dtype()

