"""Run model-written Python in a separate, confined process and tell whether ALL of its tests ran and passed.

This file is the sandbox's public face (run_program, evaluate_many, ExecResult) and its program runner: the code
that runs a sample inside the confined process and turns the sample's own exits into a status. The mechanisms live
in the `sandbox/` package, one job per file: kernel calls (kernel.py), namespaces (namespaces.py), the private file
system (mounts.py), the seccomp filter (seccomp.py), Landlock (landlock.py), resource limits (limits.py), the
per-sample cgroup (cgroups.py), privileges (privileges.py), the runner's processes (processes.py), the verdict
(verdicts.py) and the harness-side helpers (host.py).

Each sample is one run of this file as a script, `python -I -B code_eval.py CONFIG`, started in a new session (so
the whole process group can be killed) without any pre-exec hook (safe from a threaded parent such as a torch
process). That runner never runs the sample itself; three processes take part:

- the outer runner stays in the harness's namespaces and never runs sample code; it holds the pipe to the harness
  and the per-run token, kills the sandbox at the wall-clock timeout, and reports once the sandbox is gone (the
  harness kills the runner's group only as a backstop);
- the init, forked into a new PID namespace (created directly as root, inside a new user namespace otherwise),
  joins the sample's cgroup (made by the harness where it may: memory.max, pids.max), builds the private
  namespaces (network, mount, IPC, UTS) and the private file system, then waits for the program's process; its
  exit takes every process of the namespace along;
- the program's process, forked from the init, drops every privilege and runs the sample:
  - limits: RLIMIT_CPU, RLIMIT_AS (memory), RLIMIT_FSIZE (each file, so the captured output), descriptors, no
    core files; without a cgroup, RLIMIT_NPROC caps its threads and seccomp refuses memory held outside the
    address space (memfd, SysV shared memory and message queues);
  - the uid 65534 ("nobody") when the harness is root and that uid can read the interpreter (else root, still
    without capabilities), empty capability sets (bounding and ambient too), PR_SET_NO_NEW_PRIVS, not dumpable;
  - a seccomp filter: any foreign system call ABI (i386 `int 0x80`, x32) kills the process; new processes, exec,
    namespaces, mounts, tracing and reading other processes, signals to any other process, kernel keys, modules,
    BPF, perf, io_uring and Unix sockets are refused (see sandbox/seccomp.py);
  - the file system: every mount read-only; the working directory is a private tmpfs of WORKDIR_CAP_BYTES holding
    main.py; /dev holds only null, zero, full, random and urandom; /proc shows only the sandbox's two processes;
    when the interpreter lives under a directory others cannot enter (pyenv under /root), that directory is
    replaced by an empty tmpfs holding only the interpreter's folders, so the rest of it is hidden; Landlock
    (where the kernel has it) also confines writes to the working directory;
  - the network: the private namespace has only a loopback that is down; `network_isolated` is true only after
    the program's process checked that its namespace differs from the harness's and that it cannot connect to
    a listener the outer runner opened on 127.0.0.1 in the harness's namespace;
  - the tests (what follows TESTS_MARK in the program) run with the interpreter's own builtins, in a namespace
    without the solution's globals that shadow a builtin: a sample that replaces `abs` does not change the tests.

Where the kernel refuses a layer the run goes on without it and `ExecResult.isolation` says which layers held.

Completion: the program's process reports "end of tests" on a pipe to the outer runner after its code returned;
the outer runner forwards it to the harness with the run's token, which it reads only after the sandbox has
exited, so the token is never in the sandbox's memory. A sample passes only with that report and exit status 0:
`sys.exit(0)` or `os._exit(0)` before the tests finish fail. What this cannot stop: the tests run in the program's
own process, so a program written to cheat can imitate the report, skip its tests (a `sys.settrace` line jump),
patch a module the tests import, or return objects whose `__eq__` always holds; no design that runs tests in the
same process prevents that.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field

# The runner imports this file for every sample, so the harness's own modules (subprocess, tempfile, secrets,
# concurrent.futures, the sandbox package) are imported inside the functions that use them.

__all__ = ["DEFAULT_MEMORY_MB", "DEFAULT_TIMEOUT_S", "TESTS_MARK", "ExecResult", "default_workers", "evaluate_many",
           "run_program"]

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MEMORY_MB = 1024
OUTPUT_CAP_BYTES = 1 << 20  # per stream, and the largest file the program may write
WORKDIR_CAP_BYTES = 64 << 20  # all files in the private working directory together
# A sample's cgroup holds its address-space limit plus this: its files in the working directory (tmpfs pages count)
# and the init. So RLIMIT_AS still answers an ordinary allocation with a MemoryError; the cgroup catches the rest.
CGROUP_EXTRA_BYTES = WORKDIR_CAP_BYTES + (32 << 20)
UNPRIVILEGED_ID = 65534  # "nobody": the uid and gid a root harness runs programs as
# The line before a program's tests (grading.build_program writes it, followed by the entry point's name): what
# follows the LAST such line runs with pristine builtins. A solution can write the line too, but only earlier.
TESTS_MARK = "# ---- latentmas: the tests ----"
_GRACE_S = 5.0  # beyond the timeout, for the runner to tear the sandbox down before the harness kills it all


@dataclass
class ExecResult:
    passed: bool
    status: str  # passed | failed | timeout | exited_early | killed | no_code | error
    detail: str  # one line: the exception, the limit hit, or why nothing ran
    time_s: float
    stdout: str = ""
    stderr: str = ""
    network_isolated: bool | None = None  # None: the sandbox never reported (it did not start)
    processes_blocked: bool | None = None
    # What held for this run: net, fs (writes confined to the working directory), pid (PID namespace), uid,
    # caps (no effective, permitted, inheritable or ambient capability), seccomp, landlock (its ABI, 0 if absent),
    # cgroup (its version, 0 if none), nproc (RLIMIT_NPROC where set), shm_refused (memfd and SysV memory refused).
    isolation: dict = field(default_factory=dict)

    def to_record(self) -> dict:
        """The compact form stored in a results record."""
        return {"status": self.status, "detail": self.detail, "time_s": round(self.time_s, 3),
                "network_isolated": self.network_isolated}


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def run_program(program: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, memory_mb: int = DEFAULT_MEMORY_MB,
                output_cap: int = OUTPUT_CAP_BYTES, use_cgroup: bool = True) -> ExecResult:
    """Run one Python program (solution followed by its tests) in the sandbox; passed only if it ran to the end.
    use_cgroup=False takes the path of a machine where no cgroup can be made (tests use it to check that path)."""
    import secrets
    import subprocess
    import tempfile

    import sandbox.processes  # noqa: F401 - compiled once here, so the runner (python -B) finds its bytecode
    from sandbox import cgroups, host, limits, verdicts
    root = tempfile.mkdtemp(prefix="latentmas-eval-")
    work = os.path.join(root, "work")
    t0 = time.monotonic()
    group = cgroups.create((int(memory_mb) << 20) + CGROUP_EXTRA_BYTES, limits.TASKS_MAX + 1) if use_cgroup else None
    try:
        os.mkdir(work, 0o700)
        with open(os.path.join(work, "main.py"), "w", encoding="utf-8") as fh:
            fh.write(program)
        token = secrets.token_hex(16).encode()
        token_r, token_w = os.pipe()
        os.write(token_w, token)
        os.close(token_w)
        result_r, result_w = os.pipe()
        cpu_s = max(1, int(timeout_s + 0.999))
        config = {"token_fd": token_r, "result_fd": result_w, "cpu_s": cpu_s, "memory": int(memory_mb) << 20,
                  "fsize": int(output_cap), "workdir_bytes": WORKDIR_CAP_BYTES, "work": work,
                  "uid": UNPRIVILEGED_ID if os.geteuid() == 0 else -1, "parent": os.getpid(),
                  "timeout_s": float(timeout_s),
                  "cgroup": {"version": group.version, "paths": group.paths} if group else None}
        cmd = [sys.executable, "-I", "-B", os.path.abspath(__file__), json.dumps(config)]
        with tempfile.TemporaryFile(dir=root) as out, tempfile.TemporaryFile(dir=root) as err:
            try:
                proc = subprocess.Popen(cmd, cwd=work, env=host.clean_env(work), stdin=subprocess.DEVNULL,
                                        stdout=out, stderr=err, close_fds=True, pass_fds=(token_r, result_w),
                                        start_new_session=True)
            except OSError as exc:
                os.close(result_r)
                return ExecResult(False, "error", f"could not start the sandbox: {exc}", time.monotonic() - t0)
            finally:
                os.close(token_r)
                os.close(result_w)
            # The runner enforces the timeout and returns once the sandbox is gone; the harness's own deadline
            # is a backstop for a runner that does not.
            finished = host.wait_unreaped(proc.pid, timeout_s + _GRACE_S)
            host.kill_group(proc.pid)
            proc.wait()
            elapsed = time.monotonic() - t0
            raw = host.read_pipe(result_r)
            os.close(result_r)
            stdout, stderr = host.read_capped(out, output_cap), host.read_capped(err, output_cap)
        oom_kills = group.oom_kills() if group else 0
    finally:
        if group:
            group.remove()
        host.rmtree(root)

    isolation, report = verdicts.parse_report(raw, token)
    passed, status, detail = verdicts.verdict(isolation, report, finished, timeout_s, cpu_s, stderr, oom_kills,
                                              int(memory_mb) + (CGROUP_EXTRA_BYTES >> 20))
    net = isolation.get("net") if isolation else None
    procs = bool(isolation.get("seccomp") or isolation.get("nproc") is not None) if isolation else None
    return ExecResult(passed, status, detail, elapsed, stdout, stderr, net, procs, isolation)


def evaluate_many(programs: list[str | None], *, workers: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                  memory_mb: int = DEFAULT_MEMORY_MB) -> list[ExecResult]:
    """run_program over many programs, `workers` at a time (default: min(4, CPUs)); None means no code to run."""
    from concurrent.futures import ThreadPoolExecutor

    def one(program: str | None) -> ExecResult:
        if program is None:
            return ExecResult(False, "no_code", "no code found in the output", 0.0)
        return run_program(program, timeout_s=timeout_s, memory_mb=memory_mb)

    workers = default_workers() if workers is None else max(1, workers)
    if workers == 1 or len(programs) <= 1:
        return [one(p) for p in programs]
    with ThreadPoolExecutor(max_workers=min(workers, len(programs))) as pool:
        return list(pool.map(one, programs))


# ================================================================================================================
# The program runner: runs in the sandbox's program process (python -I -B code_eval.py CONFIG), never in the harness.


def _split_tests(source: str) -> tuple[str, str | None, str | None]:
    """(solution, tests, entry point) at the last TESTS_MARK line; (source, None, None) without one. The tests keep
    their line numbers in main.py."""
    solution, mark, rest = source.rpartition("\n" + TESTS_MARK)
    if not mark:
        return source, None, None
    entry, _, tests = rest.partition("\n")
    return solution, "\n" * (solution.count("\n") + 2) + tests, entry.strip() or None


def _run_sample(path: str) -> None:
    """Run main.py: the solution, then its tests with the interpreter's own builtins (a dict copy taken before the
    sample ran, so neither `builtins.abs = ...` nor a global named `abs` reaches them). The entry point keeps its
    name even when it is a builtin's."""
    import builtins
    pristine = dict(builtins.__dict__)
    with open(path, "rb") as fh:
        solution, tests, entry = _split_tests(fh.read().decode("utf-8", "surrogateescape"))
    namespace = {"__name__": "__candidate__", "__builtins__": builtins}
    exec(compile(solution, "main.py", "exec"), namespace)
    if tests is None:
        return
    scope = {k: v for k, v in namespace.items() if k.startswith("__") or k == entry or k not in pristine}
    scope["__builtins__"] = pristine
    exec(compile(tests, "main.py", "exec"), scope)


def _program_process(box) -> None:
    """The sandboxed process: confine itself, report what holds, run main.py, and only if that returned report the
    end of the tests. Never returns."""
    from sandbox.processes import END_OF_TESTS, confine

    def run() -> int:
        isolation = confine(box)
        os.write(box.status_w, json.dumps(isolation).encode() + b"\n")
        _run_sample("main.py")
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - output past its size limit does not decide the result: the tests do
                pass
        os.write(box.status_w, END_OF_TESTS)
        return 0

    _guarded(run)


def _exit_code(exc: SystemExit) -> int:
    """The status the interpreter would exit with for this SystemExit."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    try:
        print(exc.code, file=sys.stderr)
    except Exception:  # noqa: BLE001 - the program may have replaced stderr
        pass
    return 1


def _guarded(role) -> None:
    """Run role() in this forked process and exit with its status, never returning (sandbox.processes.exit_with); a
    sample's sys.exit is its exit status, as the interpreter would make it."""
    from sandbox.processes import exit_with

    def status():
        try:
            return role()
        except SystemExit as exc:
            return _exit_code(exc)

    exit_with(status)


def _main() -> None:
    # python -I leaves this file's folder off sys.path: put it there for the package, then take it off again, so
    # the sandbox's view of the interpreter's folders (sandbox/mounts.py) is the interpreter's own.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    from sandbox.processes import outer
    sys.path.remove(here)
    _guarded(lambda: outer(json.loads(sys.argv[1]), _program_process))


if __name__ == "__main__":
    _main()
