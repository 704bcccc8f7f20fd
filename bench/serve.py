"""Serving benchmark: real `nanogpt4 serve` processes under streaming chat clients, continuous batching against
one request at a time.

  python bench/serve.py [--run runs/default/pretrain] [--seconds 30] [--clients 1,8,32] [--json out.json]
  python bench/serve.py --minutes 5        # the soak: 32 clients for 5 minutes, engine server only

- Two servers, one after the other on 127.0.0.1 (never at once), the same model, prompts and seeds: the engine
  (continuous batching, `--max-rows 32`) and the baseline (`--max-rows 1`: one request at a time). Both take one
  API key with high limits from a temporary --home, so auth, rate limiting and metering are on the path.
- Each level runs N closed-loop clients (one asyncio process) for --seconds: each streams
  `POST /v1/chat/completions` (stream, include_usage, temperature 1, a seed per request, --max-tokens) and sends
  its next request when one ends. Generated tokens come from the usage chunk; TTFT is request sent → first content
  chunk, ITL the gaps between content chunks (the server may put several tokens in one; chunks_per_request in
  --json), latency request sent → [DONE]. A non-200, an error chunk, a missing
  usage or [DONE], a connection error or --timeout is a failed request. Aggregate tok/s = the level's generated
  tokens / (first request sent → last request done); no request starts after --seconds.
- Single-stream decode tok/s: the 1-client level's tokens after the first / time from first to last content chunk.
- Untimed warm-up first on each server (one request, then a burst as wide as the widest level): it compiles.
"""
import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

try:
    import httpx
except ImportError:  # this environment ships httpx as httpx2 (openai's dependency), same API
    import httpx2 as httpx

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["Tell me a long story about a cat who finds a red house.", "Write a few paragraphs about the sea.",
           "Explain how a river reaches the ocean.", "Describe the old king and his quiet song.",
           "What happened on the long road to the city?", "Write a letter to my sister about the moon.",
           "Describe a day in the life of a small bird.", "Tell me about our teacher and the apple."]


# ----------------------------------------------------------------------------- one request

@dataclass
class Result:
    start: float
    end: float = 0.0
    ok: bool = False
    reason: str = ""
    tokens: int = 0
    times: list = field(default_factory=list)  # arrival of each content chunk (perf_counter)


def request_body(i, j, max_tokens):
    """Client i's j-th request: the same on every server."""
    return {"model": "nano4", "messages": [{"role": "user", "content": PROMPTS[(i + j) % len(PROMPTS)]}],
            "max_tokens": max_tokens, "temperature": 1.0, "seed": 1000 * i + j, "stream": True,
            "stream_options": {"include_usage": True}}


async def stream_chat(client, body, res):
    """Stream one chat completion into res; a failure is raised as RuntimeError(reason)."""
    usage, done = None, False
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:200].decode('utf-8', 'replace')}")
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                continue
            obj = json.loads(line[6:])
            if "error" in obj:
                raise RuntimeError(f"error chunk: {json.dumps(obj['error'])[:200]}")
            if obj.get("usage"):
                usage = obj["usage"]
            if any(c.get("delta", {}).get("content") for c in obj.get("choices", ())):
                res.times.append(time.perf_counter())
    if usage is None or not done:
        raise RuntimeError(f"stream ended without {'usage' if usage is None else '[DONE]'}")
    res.tokens = usage["completion_tokens"]


async def one_request(client, body, timeout):
    res = Result(time.perf_counter())
    try:
        await asyncio.wait_for(stream_chat(client, body, res), timeout)
        res.ok = True
    except asyncio.TimeoutError:
        res.reason = f"timeout after {timeout:.0f} s"
    except RuntimeError as e:
        res.reason = str(e)
    except (httpx.HTTPError, OSError, ValueError, KeyError) as e:
        res.reason = f"{type(e).__name__}: {e}"[:200]
    res.end = time.perf_counter()
    return res


# ----------------------------------------------------------------------------- a load level

def http_client(url, key, n):
    return httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, trust_env=False,
                             timeout=httpx.Timeout(30.0, read=None),  # a whole request is bounded by --timeout
                             limits=httpx.Limits(max_connections=n + 4, max_keepalive_connections=n + 4))


async def load(url, key, n_clients, seconds, max_tokens, timeout, progress=None):
    """n_clients closed-loop streaming clients for `seconds`; returns (results, t0)."""
    results, t0 = [], time.perf_counter()
    deadline = t0 + seconds

    async def client_loop(i):
        j = 0
        while time.perf_counter() < deadline:
            results.append(await one_request(client, request_body(i, j, max_tokens), timeout))
            if not results[-1].ok:
                await asyncio.sleep(0.2)  # a dead server is not hammered by failing requests
            j += 1

    async def report():  # a line every `progress` seconds (the soak)
        while True:
            await asyncio.sleep(progress)
            bad = sum(not r.ok for r in results)
            print(f"  {time.perf_counter() - t0:6.0f} s: {len(results)} requests done, {bad} failed", flush=True)

    async with http_client(url, key, n_clients) as client:
        ticker = asyncio.create_task(report()) if progress else None
        await asyncio.gather(*(client_loop(i) for i in range(n_clients)))
        if ticker:
            ticker.cancel()
    return results, t0


async def warm_up(url, key, width, timeout):
    """Untimed: one request, then `width` at once (compiles the decode and prefill graphs)."""
    async with http_client(url, key, width) as client:
        first = [await one_request(client, request_body(0, 0, 16), timeout)]
        rest = await asyncio.gather(*(one_request(client, request_body(i, 0, 16), timeout) for i in range(width)))
    return first + list(rest)


def pct(xs, q, scale=1.0):
    return float(np.percentile(xs, q)) * scale if len(xs) else float("nan")


def summarize(results, t0, n_clients, cpu):
    """The level's figures (times in ms, latency in s)."""
    ok = [r for r in results if r.ok]
    ttft = [r.times[0] - r.start for r in ok if r.times]
    itl = [b - a for r in ok for a, b in zip(r.times, r.times[1:])]
    lat = [r.end - r.start for r in ok]
    wall = max((r.end for r in results), default=t0) - t0
    tokens = sum(r.tokens for r in ok)
    streamed = [r for r in ok if len(r.times) > 1]
    decode_s = sum(r.times[-1] - r.times[0] for r in streamed)
    reasons = []
    for r in results:
        if not r.ok and r.reason not in reasons and len(reasons) < 5:
            reasons.append(r.reason)
    return dict(clients=n_clients, requests=len(results), failed=len(results) - len(ok), tokens=tokens,
                seconds=wall, tok_s=tokens / wall if wall > 0 else float("nan"),
                tokens_per_request=tokens / len(ok) if ok else float("nan"),
                chunks_per_request=sum(len(r.times) for r in ok) / len(ok) if ok else float("nan"),
                decode_tok_s=sum(r.tokens - 1 for r in streamed) / decode_s if decode_s else float("nan"),
                ttft_p50_ms=pct(ttft, 50, 1e3), ttft_p99_ms=pct(ttft, 99, 1e3),
                itl_p50_ms=pct(itl, 50, 1e3), itl_p99_ms=pct(itl, 99, 1e3),
                latency_p50_s=pct(lat, 50), latency_p99_s=pct(lat, 99), failure_reasons=reasons, **cpu)


# ----------------------------------------------------------------------------- the server process

def cli():
    exe = Path(sys.executable).with_name("nanogpt4")
    return [str(exe)] if exe.exists() else [shutil.which("nanogpt4") or "nanogpt4"]


def make_key(home):
    out = subprocess.run(cli() + ["keys", "--home", str(home), "create", "--name", "bench", "--rpm", "1000000",
                                  "--tpm", "1000000000"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    key = out.stdout.strip().splitlines()[-1].strip() if out.stdout.strip() else ""
    if out.returncode != 0 or not key.startswith("sk-"):
        raise RuntimeError(f"`nanogpt4 keys create` failed ({out.returncode}): {out.stdout[-500:]}{out.stderr[-500:]}")
    return key


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    """user + system CPU seconds of a process (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


class Server:
    """`nanogpt4 serve` as a subprocess (its own session, log in home), up once GET /health answers; always
    stopped on exit: SIGTERM, then SIGKILL to its process group after a timeout."""

    def __init__(self, args, home, max_rows, name):
        self.port, self.log = free_port(), Path(home) / f"{name}.log"
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = cli() + ["serve", "--run", str(Path(args.run).resolve()), "--home", str(home), "--host",
                            "127.0.0.1", "--port", str(self.port), "--max-rows", str(max_rows)]
        self.cmd += ["--compile"] if args.compile else []
        self.start_timeout, self.proc = args.start_timeout, None

    def __enter__(self):
        print(f"$ {' '.join(self.cmd)}", flush=True)
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                         start_new_session=True)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self):
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < self.start_timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode} at start:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2, trust_env=False).status_code == 200:
                    print(f"  up in {time.perf_counter() - t0:.1f} s", flush=True)
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"server not healthy after {self.start_timeout} s:\n{self.log_tail()}")

    def log_tail(self, n=20):
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:]) if self.log.exists() else ""

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            print("  server ignored SIGTERM for 30 s: killing it", flush=True)
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def __exit__(self, *exc):
        self.stop()


# ----------------------------------------------------------------------------- driving and reporting

def run_server(args, home, key, name, max_rows, levels, seconds, progress=None):
    """Start one server, warm it up, run each level of clients on it; returns the levels' summaries."""
    out = []
    print(f"\n{name} server (--max-rows {max_rows}):", flush=True)
    with Server(args, home, max_rows, name) as srv:
        t = time.perf_counter()
        warm = asyncio.run(warm_up(srv.url, key, max(levels), args.timeout))
        bad, warmup_s = [r.reason for r in warm if not r.ok], time.perf_counter() - t
        print(f"  warm-up {warmup_s:.1f} s, {len(warm)} requests, {len(bad)} failed"
              + (f" (first: {bad[0]})" if bad else ""), flush=True)
        for n in levels:
            if srv.proc.poll() is not None:
                break
            cpu0, own0, t0 = cpu_seconds(srv.proc.pid), time.process_time(), time.perf_counter()
            results, start = asyncio.run(load(srv.url, key, n, seconds, args.max_tokens, args.timeout, progress))
            wall = time.perf_counter() - t0
            cpu = dict(server_cpu=(cpu_seconds(srv.proc.pid) - cpu0) / wall,
                       client_cpu=(time.process_time() - own0) / wall)
            s = summarize(results, start, n, cpu)
            out.append(dict(s, server=name, max_rows=max_rows, warmup_s=warmup_s))
            print(f"  {n:>2} clients: {s['requests']} requests, {s['failed']} failed, {s['tok_s']:.0f} tok/s",
                  flush=True)
            for reason in s["failure_reasons"]:
                print(f"     failure: {reason}")
            if s["failed"]:
                print(f"  server log tail:\n{srv.log_tail()}")
        if srv.proc.poll() is not None:
            print(f"  the server exited with {srv.proc.returncode} during the run:\n{srv.log_tail()}")
    return out


def fmt_pair(a, b, spec):
    return f"{a:{spec}} / {b:{spec}}"


def print_table(rows):
    head = (f"{'clients':>7}  {'server':<9}{'reqs':>6}{'tok/req':>8}{'agg tok/s':>10}{'×base':>7}"
            f"{'TTFT p50/p99 ms':>19}{'ITL p50/p99 ms':>17}{'latency p50/p99 s':>19}{'failed':>7}{'cpu srv/cli':>13}")
    print("\n" + head + "\n" + "-" * len(head))
    base = {r["clients"]: r for r in rows if r["server"] == "baseline"}
    for r in sorted(rows, key=lambda r: (r["clients"], r["server"] != "engine")):
        b = base.get(r["clients"])
        ratio = f"{r['tok_s'] / b['tok_s']:.2f}" if r["server"] == "engine" and b and b["tok_s"] else ""
        print(f"{r['clients']:>7}  {r['server']:<9}{r['requests']:>6}{r['tokens_per_request']:>8.1f}"
              f"{r['tok_s']:>10.0f}{ratio:>7}{fmt_pair(r['ttft_p50_ms'], r['ttft_p99_ms'], '.0f'):>19}"
              f"{fmt_pair(r['itl_p50_ms'], r['itl_p99_ms'], '.1f'):>17}"
              f"{fmt_pair(r['latency_p50_s'], r['latency_p99_s'], '.2f'):>19}{r['failed']:>7}"
              f"{fmt_pair(r['server_cpu'], r['client_cpu'], '.2f'):>13}")
    print("×base: engine / baseline aggregate at that many clients; cpu srv/cli: CPU cores used by the server "
          "process / by the clients (this process)")


def print_ratios(rows, bar=6.0):
    """Single-stream decode, and each server's widest level over its 1-client level (the bar is the engine's)."""
    res = {}
    for name in ("engine", "baseline"):
        mine = {r["clients"]: r for r in rows if r["server"] == name}
        if 1 in mine:
            print(f"{name}: single-stream decode {mine[1]['decode_tok_s']:.0f} tok/s (1 client, first → last "
                  f"content chunk), 1-client aggregate {mine[1]['tok_s']:.0f} tok/s")
        top = max(mine, default=None)
        if 1 in mine and top and top > 1 and mine[1]["tok_s"]:
            ratio = mine[top]["tok_s"] / mine[1]["tok_s"]
            res[f"{name}_{top}_over_1"] = ratio
            verdict = ""
            if name == "engine" and top == 32:
                verdict = f" (bar ≥ {bar:g}×: {'met' if ratio >= bar else 'MISSED'})"
            print(f"{name}: {top}-client aggregate / 1-client aggregate = {ratio:.2f}×{verdict}")
    eng = {r["clients"]: r for r in rows if r["server"] == "engine"}
    base = {r["clients"]: r for r in rows if r["server"] == "baseline" and r["tok_s"]}
    both = [n for n in sorted(eng) if n in base]
    if both:
        res["engine_over_baseline"] = {n: eng[n]["tok_s"] / base[n]["tok_s"] for n in both}
        print("engine / baseline aggregate: " + ", ".join(f"{n} client{'s' * (n > 1)} "
                                                          f"{res['engine_over_baseline'][n]:.2f}×" for n in both))
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/default/pretrain", help="run directory (the main job's base model)")
    ap.add_argument("--clients", default="1,8,32", help="concurrent streaming clients per level, comma-separated")
    ap.add_argument("--seconds", type=float, default=30, help="how long each level sends requests")
    ap.add_argument("--minutes", type=float, default=None,
                    help="the soak instead: the widest level for this many minutes on the engine server only")
    ap.add_argument("--max-tokens", type=int, default=128, help="max_tokens of every request")
    ap.add_argument("--max-rows", type=int, default=32, help="the engine server's --max-rows (the baseline's is 1)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                    help="serve with --compile (compiled decode and prefill, bf16 where the CPU has bf16 arithmetic: what one "
                         "runs on CPU)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds a request may take before it counts failed")
    ap.add_argument("--start-timeout", type=float, default=600, help="seconds a server may take to become healthy")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    levels = sorted({int(x) for x in args.clients.split(",")})
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers (finally blocks) on SIGTERM too,
    signal.signal(signal.SIGINT, signal.default_int_handler)  # and on Ctrl-C even when started in the background
    print(f"model {args.run}, max_tokens {args.max_tokens}, compile {args.compile}, {os.cpu_count()} CPUs, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    res = dict(model=str(args.run), max_tokens=args.max_tokens, compile=args.compile, max_rows=args.max_rows,
               load_before=os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="nanogpt4-bench-serve-") as home:
        key = make_key(home)
        if args.minutes:
            res["mode"] = f"soak {args.minutes:g} min"
            rows = run_server(args, home, key, "engine", args.max_rows, [max(levels)], 60 * args.minutes, progress=30)
        else:
            res["mode"], res["seconds_per_level"] = "levels", args.seconds
            rows = run_server(args, home, key, "engine", args.max_rows, levels, args.seconds)
            rows += run_server(args, home, key, "baseline", 1, levels, args.seconds)
    print_table(rows)
    res.update(print_ratios(rows), levels=rows, load_after=os.getloadavg())
    total = sum(r["failed"] for r in rows)
    verdict = f" (soak bar, zero failed: {'met' if total == 0 else 'MISSED'})" if args.minutes else ""
    print(f"failed requests: {total} of {sum(r['requests'] for r in rows)}{verdict}; load average after "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
