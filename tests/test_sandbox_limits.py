"""Limits the kernel enforces per sample, on both paths: a cgroup (memory.max counts memfd and SysV shared memory,
pids.max counts every thread) where the harness can make one, and the fallback everywhere (seccomp refuses memfd
and SysV shared memory, RLIMIT_NPROC caps threads). Also: a sample that replaces a builtin the tests use does not
change what the tests see. Each hostile program held more than its limit before these layers (docs/tasks.md)."""
from __future__ import annotations

import os

import pytest

from code_eval import CGROUP_EXTRA_BYTES, ExecResult, run_program
from grading import build_program
from sandbox import cgroups, limits

MEMORY_MB, TIMEOUT_S = 128, 10.0
BOUND_MB = MEMORY_MB + (CGROUP_EXTRA_BYTES >> 20)  # what a sample's cgroup may hold in all
CAN_MAKE_CGROUP = (lambda g: bool(g) and (g.remove() or True))(cgroups.create(16 << 20, 4))
PATHS = [pytest.param(True, id="cgroup"), pytest.param(False, id="fallback")]

# Memory outside the address space: 1 MiB memfd files (RLIMIT_FSIZE caps each file) kept open, then SysV
# segments kept after detaching; each prints how much it held when it stopped. Both aim at 4x the bound.
MEMFD = f"""import os
held, fds = 0, []
try:
    while held < {4 * BOUND_MB}:
        fd = os.memfd_create("x")
        os.write(fd, b"x" * (1 << 20))
        fds.append(fd)
        held += 1
except OSError as exc:
    print("stopped", exc.errno)
print("held", held, flush=True)
"""
SYSV = f"""import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
held = 0
while held < {4 * BOUND_MB}:
    sid = libc.shmget(0, 16 << 20, 0o1600)
    if sid < 0:
        print("stopped", ctypes.get_errno())
        break
    addr = libc.shmat(sid, None, 0)
    ctypes.memset(addr, 1, 16 << 20)
    libc.shmdt(ctypes.c_void_p(addr))
    held += 16
    print("held", held, flush=True)
"""
# Threads made by a raw clone() (no Python thread state): each runs libc's pause() on a stack of its own.
CLONE = """import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.clone.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
flags = 0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000  # VM, FS, FILES, SIGHAND, THREAD, SYSVSEM
pause = ctypes.cast(libc.pause, ctypes.c_void_p)
stacks, made = [], 0
for _ in range(1000):
    stack = ctypes.create_string_buffer(16384)
    stacks.append(stack)
    if libc.clone(pause, (ctypes.addressof(stack) + 16384) & ~15, flags, None) == -1:
        print("stopped", ctypes.get_errno())
        break
    made += 1
print("made", made, flush=True)
"""


def _run(program: str, use_cgroup: bool) -> ExecResult:
    if use_cgroup and not CAN_MAKE_CGROUP:
        pytest.skip("no cgroup can be made here (no writable cgroup v2 with memory and pids, nor v1 as root)")
    res = run_program(program, timeout_s=TIMEOUT_S, memory_mb=MEMORY_MB, use_cgroup=use_cgroup)
    assert res.isolation, (res.status, res.detail, res.stderr)
    assert bool(res.isolation["cgroup"]) is use_cgroup, res.isolation
    return res


def _held(res: ExecResult) -> int:
    lines = [ln.split() for ln in res.stdout.splitlines() if ln.startswith(("held", "made"))]
    return int(lines[-1][1]) if lines else 0


@pytest.mark.parametrize("use_cgroup", PATHS)
@pytest.mark.parametrize("program", [MEMFD, SYSV], ids=["memfd", "sysv_shm"])
def test_memory_outside_the_address_space_is_bounded(program: str, use_cgroup: bool) -> None:
    res = _run(program, use_cgroup)
    assert _held(res) <= BOUND_MB, (res.status, res.detail, res.stdout[-200:])
    if use_cgroup:  # the kernel stopped it at the cgroup's limit: killed, or its writes refused
        assert res.status == "killed" and "cgroup" in res.detail or "stopped" in res.stdout, res.stdout[-200:]
    else:  # refused outright by the filter
        if not res.isolation["seccomp"]:
            pytest.skip(f"no seccomp filter here: {res.isolation}")
        assert res.isolation["shm_refused"] and _held(res) == 0 and "stopped 1" in res.stdout, res.stdout


@pytest.mark.parametrize("use_cgroup", PATHS)
def test_raw_clone_threads_are_capped(use_cgroup: bool) -> None:
    res = _run(CLONE, use_cgroup)
    if not use_cgroup and res.isolation["uid"] == 0 and os.geteuid() == 0:
        pytest.skip("the program runs as root here, and the kernel does not apply RLIMIT_NPROC to uid 0")
    # Not res.passed: threads left sleeping on stacks the interpreter frees at the end may crash the program then.
    assert _held(res) < limits.TASKS_MAX and "stopped 11" in res.stdout, (res.status, res.stdout)  # EAGAIN
    if res.isolation["nproc"] == 0:  # no seccomp filter here: no new task at all, threads included
        assert _held(res) == 0
        return
    assert _held(res) > 0 and res.isolation["nproc"] == (None if use_cgroup else limits.TASKS_MAX), res.isolation


def test_ordinary_threads_still_work_under_both() -> None:
    program = "import threading\nts = [threading.Thread(target=lambda: None) for _ in range(8)]\n" \
              "[t.start() for t in ts]\n[t.join() for t in ts]\n"
    for use_cgroup in (True, False) if CAN_MAKE_CGROUP else (False,):
        res = run_program(program, timeout_s=TIMEOUT_S, memory_mb=MEMORY_MB, use_cgroup=use_cgroup)
        assert res.passed or res.isolation.get("nproc") == 0, (use_cgroup, res.detail)  # 0: no filter, no threads


def test_cgroup_is_removed_after_the_run() -> None:
    if not CAN_MAKE_CGROUP:
        pytest.skip("no cgroup can be made here")
    made = []
    original = cgroups.create

    def spy(*args):
        group = original(*args)
        made.append(group)
        return group

    cgroups.create = spy
    try:
        assert run_program("x = 1\n", timeout_s=TIMEOUT_S, memory_mb=MEMORY_MB).passed
    finally:
        cgroups.create = original
    assert made and made[0] and not any(os.path.exists(p) for p in made[0].paths)


# ---------------------------------------------------------------------------------------- builtins the tests use

# The candidate is called before the tests look up `abs`, so a replacement made during the call would count.
META = {"entry_point": "dist", "tests": "def check(candidate):\n    got = candidate(1, 4)\n"
        "    assert abs(got - 3) < 1e-9\n    assert sorted([candidate(0, 2), 1]) == [1, 2]\n\ncheck(dist)\n"}
WRONG = "def dist(a, b):\n    return 0\n"
CHEATS = {
    "module": "import builtins\nbuiltins.abs = lambda x: 0\nbuiltins.sorted = lambda x: [1, 2]\n" + WRONG,
    "global": "def abs(x):\n    return 0\ndef sorted(x):\n    return [1, 2]\n" + WRONG,
    "at_call": "def dist(a, b):\n    import builtins\n    builtins.abs = lambda x: 0\n"
               "    builtins.sorted = lambda x: [1, 2]\n    return 0\n",
    "dict": "import builtins\nvars(builtins)['abs'] = lambda x: 0\n"
            "vars(builtins)['sorted'] = lambda x: [1, 2]\n" + WRONG,
    "forged_mark": "import builtins\nbuiltins.abs = lambda x: 0\nbuiltins.sorted = lambda x: [1, 2]\n"
                   "# ---- latentmas: the tests ----\n" + WRONG,
}
HONEST = {
    "own_helper_named_abs": "def abs(x):\n    return x if x >= 0 else -x\ndef dist(a, b):\n    return abs(b - a)\n",
    "plain": "def dist(a, b):\n    return b - a if b > a else a - b\n",
}


@pytest.mark.parametrize("name", sorted(CHEATS))
def test_replaced_builtins_do_not_reach_the_tests(name: str) -> None:
    res = run_program(build_program(CHEATS[name], META), timeout_s=TIMEOUT_S, memory_mb=MEMORY_MB)
    assert not res.passed and res.status == "failed" and "AssertionError" in res.detail, (res.status, res.stderr)


@pytest.mark.parametrize("name", sorted(HONEST))
def test_solutions_with_their_own_helpers_still_pass(name: str) -> None:
    res = run_program(build_program(HONEST[name], META), timeout_s=TIMEOUT_S, memory_mb=MEMORY_MB)
    assert res.passed, (res.status, res.stderr)


def test_an_entry_point_named_like_a_builtin_is_the_solution() -> None:
    meta = {"entry_point": "max", "tests": "assert max([1, 5, 2]) == 5\nassert max([]) == -1\n"}
    good = "def max(xs):\n    best = -1\n    for x in xs:\n        best = x if x > best else best\n    return best\n"
    assert run_program(build_program(good, meta), timeout_s=TIMEOUT_S, memory_mb=MEMORY_MB).passed
