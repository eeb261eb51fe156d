"""The sandbox's kernel limits (issue 19), before and after: hostile samples that hold memory outside the address
space (memfd files, SysV shared memory), make threads with a raw clone(), or replace a builtin the tests use, run
through code_eval.run_program of this tree and of an earlier git revision, each in a fresh process.

    python bench/sandbox_limits.py --rev 52ce98b            # this tree (with a cgroup where one can be made)
    python bench/sandbox_limits.py --rev 52ce98b --fallback  # this tree without a cgroup (seccomp, RLIMIT_NPROC)

Not a timing benchmark: it prints what each sample held or made and its verdict, one Markdown row per case.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MEMFD = """import os
held, fds = 0, []
try:
    while held < 2048:
        fd = os.memfd_create("x")
        os.write(fd, b"x" * (1 << 20))
        fds.append(fd)
        held += 1
        if held % 64 == 0:
            print("held", held, "MiB", flush=True)
except OSError as exc:
    print("refused", exc.errno, "at", held, "MiB", flush=True)
"""
SYSV = """import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
held = 0
while held < 2048:
    sid = libc.shmget(0, 16 << 20, 0o1600)
    if sid < 0:
        print("refused", ctypes.get_errno(), "at", held, "MiB", flush=True)
        break
    addr = libc.shmat(sid, None, 0)
    ctypes.memset(addr, 1, 16 << 20)
    libc.shmdt(ctypes.c_void_p(addr))
    held += 16
    print("held", held, "MiB", flush=True)
"""
CLONE = """import ctypes, time
libc = ctypes.CDLL(None, use_errno=True)
libc.clone.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
flags = 0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000  # VM, FS, FILES, SIGHAND, THREAD, SYSVSEM
pause = ctypes.cast(libc.pause, ctypes.c_void_p)
stacks, made, t0 = [], 0, time.time()
for _ in range(3000):
    stack = ctypes.create_string_buffer(16384)
    stacks.append(stack)
    if libc.clone(pause, (ctypes.addressof(stack) + 16384) & ~15, flags, None) == -1:
        print("refused", ctypes.get_errno(), flush=True)
        break
    made += 1
print("threads", made, "in", round(time.time() - t0, 2), "s", flush=True)
"""
ABS = "import builtins\nbuiltins.abs = lambda x: 0\ndef dist(a, b):\n    return 0\n"
META = {"entry_point": "dist", "tests": "def check(candidate):\n    assert abs(candidate(1, 4) - 3) < 1e-9\n\n"
        "check(dist)\n"}
CASES = {"2048 memfd files of 1 MiB": MEMFD, "SysV segments of 16 MiB up to 2 GiB": SYSV,
         "3000 threads by raw clone()": CLONE, "builtins.abs replaced, wrong solution": None}

# Runs in a fresh interpreter with the code under test first on sys.path.
CHILD = """import inspect, json, sys
sys.path.insert(0, sys.argv[1])
from code_eval import run_program
from grading import build_program
program, fallback = json.loads(sys.argv[2]), sys.argv[3] == "1"
if program is None:
    program = build_program(*json.loads(sys.argv[4]))
kw = {"use_cgroup": False} if fallback and "use_cgroup" in inspect.signature(run_program).parameters else {}
r = run_program(program, timeout_s=10, memory_mb=1024, **kw)
last = ([ln for ln in r.stdout.splitlines() if ln.strip()] or [""])[-1]
print(json.dumps({"status": r.status, "detail": r.detail, "last": last, "cgroup": r.isolation.get("cgroup")}))
"""


def run_case(code: Path, program: str | None, fallback: bool) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(code), json.dumps(program), "1" if fallback else "0",
                          json.dumps([ABS, META])], capture_output=True, text=True, cwd=tempfile.gettempdir())
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rev", required=True, help="the earlier git revision to compare with")
    ap.add_argument("--fallback", action="store_true", help="this tree without a cgroup")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as before:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.rev], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", before], input=archive.stdout, check=True)
        after = "after, no cgroup" if args.fallback else "after"
        print(f"| case | before ({args.rev}) | {after} |\n|---|---|---|")
        for name, program in CASES.items():
            cells = []
            for code, fallback in ((Path(before), False), (ROOT, args.fallback)):
                r = run_case(code, program, fallback)
                cg = f", cgroup v{r['cgroup']}" if r.get("cgroup") else ""
                cells.append(f"{r['status']}: {r['last'] or r['detail']}{cg}")
            print(f"| {name} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
