"""The sandbox runs untrusted programs with time, memory, file and network limits; HumanEval runs through it."""
import os
import tempfile
import time

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
