"""The sandbox runs untrusted programs with time, memory, file, process and network limits, says which isolation
is in force; HumanEval runs through it."""
import os
import re
import socket
import tempfile
import time
import warnings

import pytest

from nanogpt4.evals import execution as X


def test_pass_fail_and_exit_tricks():
    assert X.run_program("def f(x):\n    return x + 1\nassert f(1) == 2\n") == "passed"
    assert X.run_program("assert 1 == 2, 'nope'") == "failed: AssertionError: nope"
    assert X.run_program("def f(:\n    pass").startswith("failed: SyntaxError")
    assert X.run_program("import sys\nsys.exit(0)").startswith("failed: SystemExit")
    assert X.run_program("import os\nos._exit(0)").startswith("failed")  # leaving early is not passing
    assert X.run_program("import os\nos.system('true')").startswith("failed: TypeError")


def test_infinite_loop_and_sleep_time_out():
    for prog in ("while True:\n    pass", "import time\ntime.sleep(30)"):
        t = time.perf_counter()
        assert X.run_program(prog, timeout=1.0) == "timed out"
        assert time.perf_counter() - t < 3.0


def test_memory_bomb_is_stopped():
    assert X.run_program("x = bytearray(8 << 30)") == "failed: MemoryError"
    grow = "x = []\nwhile True:\n    x.append(bytearray(1 << 20))"
    assert X.run_program(grow, timeout=20, memory_bytes=256 << 20) == "failed: MemoryError"


def test_network_is_refused():
    for prog in ("import socket\nsocket.socket().connect(('1.1.1.1', 80))",
                 "import socket\nsocket.create_connection(('example.com', 80), timeout=1)",
                 "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=1)"):
        res = X.run_program(prog)
        assert res.startswith("failed") and "network access is disabled" in res, res
    assert "ModuleNotFoundError" in X.run_program("import _socket")


RAW_CONNECT = """
import socket
s = socket.SocketType(socket.AF_INET, socket.SOCK_STREAM)  # the raw _socket.socket class: the monkeypatch misses it
s.settimeout(5)
s.connect(("127.0.0.1", {port}))
"""

MANY_PROCESSES = """
import posix  # os.fork is disabled, posix.fork is not: only the kernel can stop this
for _ in range(20):  # bounded, so that it is harmless where no limit is in force
    pid = posix.fork()
    if pid == 0:
        posix._exit(0)
    posix.waitpid(pid, 0)
"""


@pytest.fixture
def port():
    """The port of a TCP server listening on 127.0.0.1 in the tests' own network namespace."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


@pytest.fixture
def fresh_isolation():
    """isolation() probed anew in the test (which changes what the runner is given) and again after it."""
    X.isolation.cache_clear()
    yield
    X.isolation.cache_clear()


@pytest.mark.parametrize("tries", [X.UNSHARE_TRIES, (X.CLONE_NEWUSER | X.CLONE_NEWNET,)],
                         ids=["default", "user-namespace"])
def test_network_namespace_stops_a_raw_socket(tries, port, monkeypatch, fresh_isolation):
    monkeypatch.setattr(X, "UNSHARE_TRIES", tries)
    iso = X.isolation()
    if not iso["network_namespace"] and re.search(r"unshare\(0x\w+\): ", iso["status"]):  # refused, with errno
        pytest.skip("no network namespace on this kernel: " + iso["reason"])
    res = X.run_program(RAW_CONNECT.format(port=port))
    assert "Network is unreachable" in res, res  # the fresh namespace has only a loopback, and it is down
    # the control: with neither the namespace nor the socket filter, the same program reaches the server
    monkeypatch.setattr(X, "UNSHARE_TRIES", ())
    monkeypatch.setattr(X, "seccomp_filter", lambda deny_sockets=False: b"")
    with pytest.warns(RuntimeWarning, match="isolation differed"):
        assert X.run_program(RAW_CONNECT.format(port=port)) == "passed"


def test_process_limit_binds_even_as_root(fresh_isolation):
    iso = X.isolation()
    if not iso["process_limit"] and "no seccomp: " in iso["status"]:  # refused by the kernel, not by a bug
        pytest.skip("no process limit on this kernel: " + iso["reason"])
    assert X.run_program(MANY_PROCESSES) == "failed: BlockingIOError: [Errno 11] Resource temporarily unavailable"
    assert X.run_program("import _thread\n_thread.start_new_thread(print, ())") == \
        "failed: RuntimeError: can't start new thread"


def test_isolation_reports_what_is_missing(port, monkeypatch, fresh_isolation):
    monkeypatch.setattr(X, "UNSHARE_TRIES", (0,))  # unshare(0) returns 0 and changes nothing
    with pytest.warns(RuntimeWarning, match="returned 0 but the network namespace did not change"):
        iso = X.isolation()
    assert not iso["network_namespace"] and "did not change" in iso["reason"]
    if iso["socket_filter"]:  # the fallback: seccomp refuses the raw socket
        assert X.run_program(RAW_CONNECT.format(port=port)) == "failed: PermissionError: [Errno 13] Permission denied"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert X.isolation() == iso  # probed and warned once
    X.isolation.cache_clear()
    monkeypatch.setattr(X, "UNSHARE_TRIES", (1,))  # not a namespace flag: unshare fails
    with pytest.warns(RuntimeWarning, match=r"unshare\(0x1\): Invalid argument"):
        assert not X.isolation()["network_namespace"]
    X.isolation.cache_clear()
    monkeypatch.setattr(X, "seccomp_filter", lambda deny_sockets=False: b"\0" * 8)  # a filter the kernel rejects
    with pytest.warns(RuntimeWarning, match="PR_SET_SECCOMP: Invalid argument"):
        iso = X.isolation()
    assert not iso["socket_filter"] and "only the socket monkeypatch guards the network" in iso["reason"]
    assert iso["process_limit"] == (X.run_program(MANY_PROCESSES) != "passed")  # as root: False, and it says so
    assert iso["process_limit"] or "processes are not limited" in iso["reason"]


def test_files_land_in_a_temp_dir_that_is_removed():
    res = X.run_program("import os\nopen('probe.txt', 'w').write('x')\nraise RuntimeError(os.path.abspath('probe.txt'))")
    path = res.split("RuntimeError: ")[1]
    assert os.path.basename(os.path.dirname(path)).startswith("nanogpt4-exec-")
    assert os.path.dirname(os.path.dirname(path)) == tempfile.gettempdir()
    assert not os.path.exists(os.path.dirname(path)) and not os.path.exists("probe.txt")
    assert X.run_program("open('big', 'wb').write(b'x' * (64 << 20))").startswith("failed")  # RLIMIT_FSIZE


def test_run_programs_deduplicates_and_keeps_order(monkeypatch):
    calls = []
    real = X.run_program
    monkeypatch.setattr(X, "run_program", lambda p, *a: calls.append(p) or real(p, *a))
    progs = ["assert True", "assert False", "assert True", "def f(:\n  pass", "assert True", "if 1:\nx = 2"]
    res = X.run_programs(progs)
    assert res[:3] == ["passed", "failed: AssertionError", "passed"] and res[4] == "passed"
    assert sorted(calls) == ["assert False", "assert True"]  # once each; syntax errors need no subprocess
    assert res[3] == real(progs[3]) and res[5] == real(progs[5]) and res[5].startswith("failed: IndentationError")


@pytest.mark.network
def test_humaneval_canonical_solutions_pass():
    from nanogpt4.evals import humaneval as H
    problems = H.load_problems()
    assert len(problems) == 164 and problems[0]["task_id"] == "HumanEval/0"
    assert H.evaluate(problems, [p["canonical_solution"] for p in problems]) == ["passed"] * 164
    assert "passed" not in H.evaluate(problems, [""] * 164)
