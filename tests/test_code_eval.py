"""The code sandbox against what model-written code does by accident: loops, forks, early exits, floods of output
or memory, deleting its working directory. All planted programs run once, in parallel, with short limits."""
from __future__ import annotations

import os
import socket
import tempfile
import time

import pytest

from code_eval import ExecResult, evaluate_many, run_program
from grading import build_program, grade_code

# A HumanEval-style task: the solution defines add(a, b); the tests call check(add).
META = {"entry_point": "add", "tests": "def check(candidate):\n    assert candidate(2, 3) == 5\n    "
        "assert candidate(-1, 1) == 0\n\ncheck(add)\n"}
GOOD = "def add(a, b):\n    return a + b\n"


def _sample(prefix: str) -> str:
    """A correct solution preceded by a planted behaviour: the program passes only if the tests still run."""
    return build_program(prefix + "\n" + GOOD, META)


# Who the program is, as the harness can check it: its PID namespace (inside one, pids are the namespace's own).
_WHO = "import os\nprint(os.stat('/proc/self/ns/pid').st_ino, os.getpid(), flush=True)"

PLANTED: dict[str, str] = {
    "correct": build_program(GOOD, META),
    "wrong": build_program("def add(a, b):\n    return a - b\n", META),
    "syntax_error": build_program("def add(a, b)\n    return a + b\n", META),
    "infinite_loop": _sample("while True:\n    pass"),
    "sleep_forever": _sample(f"{_WHO}\nimport time\ntime.sleep(600)"),
    # Bounded: at most 64 children even where forking is allowed; each prints its pid and sleeps.
    "fork_bomb": _sample(f"{_WHO}\nimport os, time\nfor _ in range(64):\n    pid = os.fork()\n    if pid == 0:\n"
                         "        print(os.getpid(), flush=True)\n        time.sleep(600)\n        os._exit(0)"),
    "os_exit_before_tests": _sample("import os\nos._exit(0)"),
    "sys_exit_before_tests": _sample("import sys\nsys.exit(0)"),
    "exit_inside_solution": build_program("import sys\ndef add(a, b):\n    sys.exit(0)\n", META),
    "huge_output": _sample("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)"),
    "huge_output_caught": _sample("try:\n    for _ in range(64):\n        print('y' * 65536)\nexcept OSError:\n"
                                  "    pass"),
    "memory_bomb": _sample("blob = bytearray(1 << 40)"),
    "memory_growth": _sample("chunks = []\nwhile True:\n    chunks.append(bytearray(32 << 20))"),
    "delete_cwd": _sample("import os, shutil\nfor name in os.listdir('.'):\n    os.remove(name)\n"
                          "shutil.rmtree(os.getcwd(), ignore_errors=True)"),
    "reads_stdin": _sample("input()"),
    "environment": _sample("import os\nassert 'HF_HUB_OFFLINE' not in os.environ and 'PYTEST_CURRENT_TEST' not in "
                           "os.environ\nassert os.environ['HOME'] == os.getcwd()\n"
                           "assert os.listdir('.') == ['main.py']\nassert set(os.environ) <= {'PATH', 'HOME', "
                           "'TMPDIR', 'LANG', 'LC_ALL', 'OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS'}"),
    "stray_file_descriptors": _sample("import os\nfds = [int(f) for f in os.listdir('/proc/self/fd')]\n"
                                      "print(sorted(fds), flush=True)\nassert len(fds) <= 5, fds"),
    "thread": _sample("import threading\nt = threading.Thread(target=lambda: None)\nt.start()\nt.join()"),
}
TIMEOUT_S, MEMORY_MB = 1.5, 256


@pytest.fixture(scope="module")
def planted() -> dict[str, ExecResult]:
    # An inheritable descriptor the sandbox must not see.
    leak = os.open(os.devnull, os.O_RDONLY)
    os.set_inheritable(leak, True)
    before = set(os.listdir(tempfile.gettempdir()))
    try:
        names = list(PLANTED)
        results = evaluate_many([PLANTED[n] for n in names], workers=4, timeout_s=TIMEOUT_S, memory_mb=MEMORY_MB)
    finally:
        os.close(leak)
    left = {n for n in set(os.listdir(tempfile.gettempdir())) - before if n.startswith("latentmas-eval-")}
    assert not left, f"sandbox folders left behind: {left}"
    return dict(zip(names, results))


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie is gone for our purpose
        return fh.read().split(")")[-1].split()[0] == "Z"


def _sandbox_gone(res: ExecResult) -> bool:
    """No process of the sandbox is left: none in its PID namespace, or (without one) the printed pids."""
    ns, *pids = map(int, res.stdout.split())
    if not res.isolation.get("pid"):
        return all(_gone(pid) for pid in pids)
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.stat(f"/proc/{entry}/ns/pid").st_ino == ns and not _gone(int(entry)):
                return False
        except OSError:  # exited meanwhile
            pass
    return True


def test_correct_passes_and_wrong_fails(planted: dict[str, ExecResult]) -> None:
    assert planted["correct"].passed and planted["correct"].status == "passed"
    assert not planted["wrong"].passed and planted["wrong"].status == "failed"
    assert planted["wrong"].detail == "AssertionError"
    assert not planted["syntax_error"].passed and "SyntaxError" in planted["syntax_error"].detail


@pytest.mark.parametrize("name", ["infinite_loop", "sleep_forever"])
def test_timeouts_kill_the_program(planted: dict[str, ExecResult], name: str) -> None:
    res = planted[name]
    assert not res.passed and res.status == "timeout"
    assert res.time_s < TIMEOUT_S + 3
    assert res.isolation  # reported before the program ran, so a timed-out run has it too
    if name == "sleep_forever":
        assert _sandbox_gone(res)


def test_fork_bomb_is_contained(planted: dict[str, ExecResult]) -> None:
    res = planted["fork_bomb"]
    if res.processes_blocked:
        assert not res.passed and "BlockingIOError" in res.detail
    # Wherever forking was possible, every child was killed with the sandbox.
    assert _sandbox_gone(res)


@pytest.mark.parametrize("name", ["os_exit_before_tests", "sys_exit_before_tests", "exit_inside_solution"])
def test_exit_before_the_tests_fails(planted: dict[str, ExecResult], name: str) -> None:
    res = planted[name]
    assert not res.passed and res.status == "exited_early"


def test_huge_output_is_capped(planted: dict[str, ExecResult]) -> None:
    flood = planted["huge_output"]
    assert not flood.passed and len(flood.stdout) <= 1 << 20 and "File too large" in flood.detail
    caught = planted["huge_output_caught"]  # the flood does not decide the result: the tests do
    assert caught.passed and len(caught.stdout) <= 1 << 20


@pytest.mark.parametrize("name", ["memory_bomb", "memory_growth"])
def test_memory_limit(planted: dict[str, ExecResult], name: str) -> None:
    res = planted[name]
    assert not res.passed and "MemoryError" in res.detail and res.time_s < TIMEOUT_S + 3


def test_deleting_the_working_directory_is_harmless(planted: dict[str, ExecResult]) -> None:
    assert planted["delete_cwd"].passed  # the program was read before it ran; cleanup copes with the rest


def test_isolation_of_inputs(planted: dict[str, ExecResult]) -> None:
    assert not planted["reads_stdin"].passed and "EOFError" in planted["reads_stdin"].detail
    assert planted["environment"].passed, planted["environment"].stderr
    fds = planted["stray_file_descriptors"]
    assert fds.passed, fds.stdout  # 0, 1, 2, the result pipe and listdir's own descriptor
    assert planted["thread"].passed  # threads are allowed; new processes are not


def test_network_blocked_where_the_os_allows() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        res = run_program(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n",
                          timeout_s=5, memory_mb=MEMORY_MB)
    finally:
        server.close()
    if res.network_isolated is False:
        pytest.skip("this kernel refuses network namespaces here; the README says the network is then open")
    assert res.network_isolated and not res.passed and "OSError" in res.detail


def test_workers_run_in_parallel() -> None:
    program = "import time\ntime.sleep(0.6)\n"
    t0 = time.monotonic()
    results = evaluate_many([program] * 4, workers=4, timeout_s=5)
    assert all(r.passed for r in results)
    assert time.monotonic() - t0 < 4 * 0.6  # serial would take at least 2.4 s


def test_no_code_is_a_failure_without_a_process() -> None:
    [res] = evaluate_many([None])
    assert res.status == "no_code" and not res.passed


def test_grade_code_records() -> None:
    outputs = ["Here it is:\n```python\n" + GOOD + "```\nUsage:\n```python\nprint(add(1, 2))\n```",
               "```python\ndef add(a, b):\n    return a * b\n```", "I do not know."]
    graded = grade_code(outputs, [META] * 3, workers=2, timeout_s=5)
    assert [g["correct"] for g in graded] == [True, False, False]
    assert [g["extraction"] for g in graded] == ["block", "block", "none"]
    assert graded[0]["prediction"] == GOOD.rstrip("\n")  # the defining block, not the usage example
    assert graded[1]["execution"]["status"] == "failed" and graded[2]["execution"]["status"] == "no_code"
    assert set(graded[0]["execution"]) == {"status", "detail", "time_s", "network_isolated"}
