"""Measured hardware facts for MFU: the machine's achievable matmul peak, measured (not read off a datasheet)
and cached per machine, dtype and thread count."""
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
