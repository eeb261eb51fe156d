"""Run model-written Python in a separate, limited process and tell whether ALL of its tests ran and passed.

Each sample gets its own process, `python -I -B -c RUNNER`, started in a new session (so the whole process group
can be killed) and without any pre-exec hook (safe to start from a threaded parent such as a torch process). The
runner applies the limits to itself before it reads the program:

- wall-clock timeout (the parent kills the process group), RLIMIT_CPU, RLIMIT_AS (memory), RLIMIT_FSIZE (bounds
  the captured output and any file the program writes), RLIMIT_NPROC = 0 (no new processes or threads; the
  kernel does not apply this to root, so a root parent runs the program as the unprivileged uid 65534), no core
  files;
- a fresh temporary working directory, removed afterwards; stdin is /dev/null; no inherited file descriptors but
  two pipes; stdout and stderr go to unlinked temporary files; the environment is replaced by a minimal one;
- the network: a private network namespace (only a loopback that is down), created directly as root or through an
  unprivileged user namespace otherwise. Where the kernel refuses both, the network is NOT blocked and every
  result says so (`network_isolated: false`).

A sample passes only when the runner reached the end of the program (solution, then tests) and wrote a random
per-run token to a pipe only the parent reads: `sys.exit(0)` or `os._exit(0)` before the tests finish leave no
token and fail. This guards a run against the accidents of model-written code (loops, forks, memory and output
floods, early exits, file deletion). It is not a security boundary against code written to escape: the program
shares the kernel, can read what its uid can read, and could inspect its own process.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["DEFAULT_MEMORY_MB", "DEFAULT_TIMEOUT_S", "ExecResult", "default_workers", "evaluate_many",
           "run_program"]

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MEMORY_MB = 1024
OUTPUT_CAP_BYTES = 1 << 20  # per stream, and the largest file the program may write
UNPRIVILEGED_ID = 65534  # "nobody": the uid a root parent runs programs as
_DETAIL_CHARS = 300

# The runner, executed by a fresh interpreter. It reads its token from a pipe, isolates and limits itself, then
# runs main.py from its working directory in a namespace of its own, and writes the token only if that returns.
_RUNNER = r'''
import os, resource, sys

def _unshare(flags):
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.unshare(flags) == 0
    except Exception:
        return False

def _isolate(drop_id):
    newuser, newnet = 0x10000000, 0x40000000
    if os.geteuid() == 0:
        net = _unshare(newnet)
        if drop_id >= 0:
            try:
                os.setgroups([])
                os.setgid(drop_id)
                os.setuid(drop_id)
            except OSError:
                pass
        return net
    uid, gid = os.getuid(), os.getgid()
    if not _unshare(newuser | newnet):
        return False
    try:
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as fh:
                fh.write(text)
    except OSError:
        pass
    return True

def _no_new_processes():
    # seccomp filter: fork, vfork and clone without CLONE_THREAD fail with EAGAIN; clone3 reports ENOSYS so that
    # libc falls back to clone, whose flags the filter can read. Threads stay possible.
    import ctypes
    arch = {"x86_64": (0xC000003E, (56, 57, 58)), "aarch64": (0xC00000B7, (220,))}.get(os.uname().machine)
    if arch is None:
        return False
    audit_arch, (clone, *forks) = arch
    ld, jeq, jset, ret = 0x20, 0x15, 0x45, 0x06
    allow, eagain, enosys = 0x7FFF0000, 0x00050000 | 11, 0x00050000 | 38
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, audit_arch), (ret, 0, 0, allow), (ld, 0, 0, 0),
            (jset, 2 + len(forks) + 4, 0, 0x40000000), (jeq, 2 + len(forks) + 4, 0, 435),
            (jeq, len(forks) + 1, 0, clone)]
    prog += [(jeq, len(forks) - i + 3, 0, nr) for i, nr in enumerate(forks)]
    prog += [(ret, 0, 0, allow), (ld, 0, 0, 16), (jset, 0, 1, 0x00010000), (ret, 0, 0, allow),
             (ret, 0, 0, eagain), (ret, 0, 0, enosys)]
    class Insn(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]
    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Insn))]
    insns = (Insn * len(prog))(*[Insn(*p) for p in prog])
    fprog = Prog(len(prog), insns)
    libc = ctypes.CDLL(None, use_errno=True)
    ul = ctypes.c_ulong
    if libc.prctl(38, ul(1), ul(0), ul(0), ul(0)) != 0:  # PR_SET_NO_NEW_PRIVS
        return False
    return libc.prctl(22, ul(2), ctypes.byref(fprog), ul(0), ul(0)) == 0  # PR_SET_SECCOMP, MODE_FILTER

def _main():
    token_fd, result_fd, cpu_s, mem, fsize, drop_id = (int(x) for x in sys.argv[1:7])
    token = os.read(token_fd, 64)
    os.close(token_fd)
    net = _isolate(drop_id)
    try:
        procs = _no_new_processes()
    except Exception:
        procs = False
    limits = [(resource.RLIMIT_CPU, cpu_s, cpu_s + 1), (resource.RLIMIT_AS, mem, mem),
              (resource.RLIMIT_FSIZE, fsize, fsize), (resource.RLIMIT_CORE, 0, 0)]
    if not procs and os.geteuid() != 0:  # fallback: no new processes (nor threads) for this uid
        limits.append((resource.RLIMIT_NPROC, 0, 0))
        procs = True
    for res, soft, hard in limits:
        try:
            resource.setrlimit(res, (soft, hard))
        except (ValueError, OSError):
            pass
    write = os.write
    write(result_fd, b"net=%d nproc=%d\n" % (net, procs))
    with open("main.py", "rb") as fh:
        code = compile(fh.read(), "main.py", "exec")
    exec(code, {"__name__": "__candidate__", "__builtins__": __builtins__})
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        pass
    write(result_fd, token)
    os._exit(0)

_main()
'''


@dataclass
class ExecResult:
    passed: bool
    status: str  # passed | failed | timeout | exited_early | killed | no_code | error
    detail: str  # one line: the exception, the limit hit, or why nothing ran
    time_s: float
    stdout: str = ""
    stderr: str = ""
    network_isolated: bool | None = None  # None: the runner never reported (it did not start)
    processes_blocked: bool | None = None

    def to_record(self) -> dict:
        """The compact form stored in a results record."""
        return {"status": self.status, "detail": self.detail, "time_s": round(self.time_s, 3),
                "network_isolated": self.network_isolated}


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _others_can_read(path: str) -> bool:
    """True when a process of another uid can reach and read path (every ancestor searchable by others)."""
    path = os.path.realpath(path)
    try:
        st = os.stat(path)
    except OSError:
        return False
    need = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(st.st_mode) else 0)
    if st.st_mode & need != need:
        return False
    parent = os.path.dirname(path)
    while parent and parent != os.path.dirname(parent):
        try:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
        parent = os.path.dirname(parent)
    return True


@lru_cache(maxsize=1)
def _drop_id() -> int:
    """The uid/gid a root parent runs programs as, or -1 (not root, or the interpreter is private to root, in
    which case the program runs as root and RLIMIT_NPROC does not hold)."""
    if os.geteuid() != 0:
        return -1
    paths = {sys.executable, sys.prefix, sys.base_prefix}
    paths.update(p for p in (sysconfig.get_paths().get(k) for k in ("stdlib", "purelib", "platlib")) if p)
    return UNPRIVILEGED_ID if all(_others_can_read(p) for p in paths) else -1


def _clean_env(work: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_unreaped(pid: int, timeout_s: float) -> bool:
    """Wait until pid exits WITHOUT reaping it (so its pid, the group id, cannot be reused before the group is
    killed). False when the timeout passed first."""
    deadline = time.monotonic() + timeout_s
    pause = 0.002
    while True:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.02)


def _read_pipe(fd: int) -> bytes:
    os.set_blocking(fd, False)
    chunks = []
    try:
        while True:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            chunks.append(chunk)
    except BlockingIOError:  # a writer that escaped the group kill still holds it open: take what is there
        pass
    return b"".join(chunks)


def _read_capped(fh, cap: int) -> str:
    fh.seek(0)
    return fh.read(cap).decode("utf-8", "replace")


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= _DETAIL_CHARS else line[:_DETAIL_CHARS - 3] + "..."


def _rmtree(path: str) -> None:
    def fix(func, p, _exc):  # the program may have removed permissions on what it created
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=fix)
    shutil.rmtree(path, ignore_errors=True)


def run_program(program: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, memory_mb: int = DEFAULT_MEMORY_MB,
                output_cap: int = OUTPUT_CAP_BYTES) -> ExecResult:
    """Run one Python program (solution followed by its tests) in the sandbox; passed only if it ran to the end."""
    root = tempfile.mkdtemp(prefix="latentmas-eval-")
    work = os.path.join(root, "work")
    drop = _drop_id()
    t0 = time.monotonic()
    try:
        os.mkdir(work, 0o700)
        main = os.path.join(work, "main.py")
        with open(main, "w", encoding="utf-8") as fh:
            fh.write(program)
        if drop >= 0:
            os.chown(work, drop, drop)
            os.chown(main, drop, drop)
        token = secrets.token_hex(16).encode()
        token_r, token_w = os.pipe()
        os.write(token_w, token)
        os.close(token_w)
        result_r, result_w = os.pipe()
        cpu_s = max(1, int(timeout_s + 0.999))
        cmd = [sys.executable, "-I", "-B", "-c", _RUNNER, str(token_r), str(result_w), str(cpu_s),
               str(int(memory_mb) << 20), str(int(output_cap)), str(drop)]
        with tempfile.TemporaryFile(dir=root) as out, tempfile.TemporaryFile(dir=root) as err:
            try:
                proc = subprocess.Popen(cmd, cwd=work, env=_clean_env(work), stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=err, close_fds=True, pass_fds=(token_r, result_w),
                                        start_new_session=True)
            except OSError as exc:
                os.close(result_r)
                return ExecResult(False, "error", f"could not start the sandbox: {exc}", time.monotonic() - t0)
            finally:
                os.close(token_r)
                os.close(result_w)
            finished = _wait_unreaped(proc.pid, timeout_s)
            _kill_group(proc.pid)  # a timed-out program, and anything a finished one left behind
            rc = proc.wait()
            elapsed = time.monotonic() - t0
            report = _read_pipe(result_r)
            os.close(result_r)
            stdout, stderr = _read_capped(out, output_cap), _read_capped(err, output_cap)
    finally:
        _rmtree(root)

    header, _, rest = report.partition(b"\n")
    net = nproc = None
    if header.startswith(b"net="):
        fields = dict(kv.split(b"=", 1) for kv in header.split() if b"=" in kv)
        net, nproc = fields.get(b"net") == b"1", fields.get(b"nproc") == b"1"
    passed = token in rest
    if passed:
        status, detail = "passed", ""
    elif not finished:
        status, detail = "timeout", f"killed after {timeout_s:g} s wall clock"
    elif rc in (-signal.SIGXCPU, -signal.SIGKILL):
        status, detail = "timeout", f"CPU time limit ({cpu_s} s)"
    elif rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = str(-rc)
        status, detail = "killed", f"killed by signal {name}"
    elif rc == 0:
        status, detail = "exited_early", "exited with code 0 before the tests finished"
    else:
        status, detail = "failed", _last_line(stderr) or f"exit code {rc}"
    return ExecResult(passed, status, detail, elapsed, stdout, stderr, net, nproc)


def evaluate_many(programs: list[str | None], *, workers: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                  memory_mb: int = DEFAULT_MEMORY_MB) -> list[ExecResult]:
    """run_program over many programs, `workers` at a time (default: min(4, CPUs)); None means no code to run."""
    def one(program: str | None) -> ExecResult:
        if program is None:
            return ExecResult(False, "no_code", "no code found in the output", 0.0)
        return run_program(program, timeout_s=timeout_s, memory_mb=memory_mb)

    workers = default_workers() if workers is None else max(1, workers)
    if workers == 1 or len(programs) <= 1:
        return [one(p) for p in programs]
    with ThreadPoolExecutor(max_workers=min(workers, len(programs))) as pool:
        return list(pool.map(one, programs))
