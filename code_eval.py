"""Run model-written Python in a separate, confined process and tell whether ALL of its tests ran and passed.

Each sample is one run of this file as a script, `python -I -B code_eval.py CONFIG`, started in a new session (so
the whole process group can be killed) without any pre-exec hook (safe from a threaded parent such as a torch
process). That runner never runs the sample itself; three processes take part:

- the outer runner stays in the harness's namespaces and never runs sample code; it holds the pipe to the harness
  and the per-run token, kills the sandbox at the wall-clock timeout, and reports once the sandbox is gone (the
  harness kills the runner's group only as a backstop);
- the init, forked into a new PID namespace (created directly as root, inside a new user namespace otherwise),
  builds the private namespaces (network, mount, IPC, UTS) and the private file system, then waits for the
  program's process; its exit takes every process of the namespace along;
- the program's process, forked from the init, drops every privilege and runs the sample:
  - limits: RLIMIT_CPU, RLIMIT_AS (memory), RLIMIT_FSIZE (each file, so the captured output), no core files;
  - the uid 65534 ("nobody") when the harness is root and that uid can read the interpreter (else root, still
    without capabilities), empty capability sets (bounding and ambient too), PR_SET_NO_NEW_PRIVS, not dumpable;
  - a seccomp filter: any foreign system call ABI (i386 `int 0x80`, x32) kills the process; new processes, exec,
    namespaces, mounts, tracing and reading other processes, signals to any other process, kernel keys, modules,
    BPF, perf, io_uring and Unix sockets are refused (see _DENIED);
  - the file system: every mount read-only; the working directory is a private tmpfs of WORKDIR_CAP_BYTES holding
    main.py; /dev holds only null, zero, full, random and urandom; /proc shows only the sandbox's two processes;
    when the interpreter lives under a directory others cannot enter (pyenv under /root), that directory is
    replaced by an empty tmpfs holding only the interpreter's folders, so the rest of it is hidden; Landlock
    (where the kernel has it) also confines writes to the working directory;
  - the network: the private namespace has only a loopback that is down; `network_isolated` is true only after
    the program's process checked that its namespace differs from the harness's and that it cannot connect to
    a listener the outer runner opened on 127.0.0.1 in the harness's namespace.

Where the kernel refuses a layer the run goes on without it and `ExecResult.isolation` says which layers held.

Completion: the program's process reports "end of tests" on a pipe to the outer runner after its code returned;
the outer runner forwards it to the harness with the run's token, which it reads only after the sandbox has
exited, so the token is never in the sandbox's memory. A sample passes only with that report and exit status 0:
`sys.exit(0)` or `os._exit(0)` before the tests finish fail. What this cannot stop: the tests run in the program's
own process, so a program written to cheat can imitate the report, skip its tests (a `sys.settrace` line jump) or
return objects whose `__eq__` always holds; no design that runs tests in the same process prevents that.
"""
from __future__ import annotations

import json
import os
import signal
import stat
import sys
import time
from dataclasses import dataclass, field

# The runner imports this file for every sample, so the harness's own modules (subprocess, tempfile, shutil,
# secrets, concurrent.futures) are imported inside the functions that use them: about 10 ms less per sample.

__all__ = ["DEFAULT_MEMORY_MB", "DEFAULT_TIMEOUT_S", "ExecResult", "default_workers", "evaluate_many",
           "run_program"]

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MEMORY_MB = 1024
OUTPUT_CAP_BYTES = 1 << 20  # per stream, and the largest file the program may write
WORKDIR_CAP_BYTES = 64 << 20  # all files in the private working directory together
UNPRIVILEGED_ID = 65534  # "nobody": the uid and gid a root harness runs programs as
_DETAIL_CHARS = 300
_GRACE_S = 5.0  # beyond the timeout, for the runner to tear the sandbox down before the harness kills it all
_END_OF_TESTS = b"\x00end of tests\n"


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
    # caps (no effective, permitted, inheritable or ambient capability), seccomp, landlock (its ABI, 0 if absent).
    isolation: dict = field(default_factory=dict)

    def to_record(self) -> dict:
        """The compact form stored in a results record."""
        return {"status": self.status, "detail": self.detail, "time_s": round(self.time_s, 3),
                "network_isolated": self.network_isolated}


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


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
            chunk = os.read(fd, 65536)
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
    import shutil

    def fix(func, p, _exc):  # the program may have removed permissions on what it created
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=fix)
    shutil.rmtree(path, ignore_errors=True)


def _json_dict(line: bytes) -> dict | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _parse_report(raw: bytes, token: bytes) -> tuple[dict, dict | None]:
    """(isolation, final report) from what the outer runner wrote: the isolation line as soon as the sandbox was
    set up, then, once it is gone, the final report and this run's token (None when either is missing)."""
    import secrets
    lines = raw.split(b"\n")
    isolation = _json_dict(lines[0]) or {}
    report = None
    if len(lines) == 3 and secrets.compare_digest(lines[2], token):
        report = _json_dict(lines[1])
    return isolation, report


def _verdict(isolation: dict, report: dict | None, finished: bool, timeout_s: float, cpu_s: int,
             stderr: str) -> tuple[bool, str, str]:
    """(passed, status, detail) from the outer runner's report on the program's process."""
    if not finished or (report or {}).get("timeout"):
        return False, "timeout", f"killed after {timeout_s:g} s wall clock"
    if report is None:
        return False, "error", _last_line(stderr) or "the sandbox did not report"
    wait_status = report.get("status")
    if report.get("done") and wait_status == 0:
        return True, "passed", ""
    if not isinstance(wait_status, int) or not isolation:  # the sandbox failed before the program ran
        return False, "error", _last_line(stderr) or "the sandbox did not start the program"
    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        if sig in (signal.SIGXCPU, signal.SIGKILL):
            return False, "timeout", f"CPU time limit ({cpu_s} s)"
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        why = " (a forbidden system call)" if sig == signal.SIGSYS else ""
        return False, "killed", f"killed by signal {name}{why}"
    code = os.WEXITSTATUS(wait_status)
    if code == 0:
        return False, "exited_early", "exited with code 0 before the tests finished"
    return False, "failed", _last_line(stderr) or f"exit code {code}"


def run_program(program: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, memory_mb: int = DEFAULT_MEMORY_MB,
                output_cap: int = OUTPUT_CAP_BYTES) -> ExecResult:
    """Run one Python program (solution followed by its tests) in the sandbox; passed only if it ran to the end."""
    import secrets
    import subprocess
    import tempfile
    root = tempfile.mkdtemp(prefix="latentmas-eval-")
    work = os.path.join(root, "work")
    t0 = time.monotonic()
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
                  "timeout_s": float(timeout_s)}
        cmd = [sys.executable, "-I", "-B", os.path.abspath(__file__), json.dumps(config)]
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
            # The runner enforces the timeout and returns once the sandbox is gone; the harness's own deadline
            # is a backstop for a runner that does not.
            finished = _wait_unreaped(proc.pid, timeout_s + _GRACE_S)
            _kill_group(proc.pid)
            proc.wait()
            elapsed = time.monotonic() - t0
            raw = _read_pipe(result_r)
            os.close(result_r)
            stdout, stderr = _read_capped(out, output_cap), _read_capped(err, output_cap)
    finally:
        _rmtree(root)

    isolation, report = _parse_report(raw, token)
    passed, status, detail = _verdict(isolation, report, finished, timeout_s, cpu_s, stderr)
    net = isolation.get("net") if isolation else None
    procs = bool(isolation.get("seccomp") or isolation.get("nproc")) if isolation else None
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
# The runner: everything below runs in `python -I -B code_eval.py CONFIG`, never in the harness.

CLONE_THREAD = 0x00010000
CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x02000000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
_NEW_NAMESPACES = CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | \
    CLONE_NEWNET

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 0x1, 0x2, 0x4, 0x8, 0x20
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE, MS_RELATIME = 0x400, 0x800, 0x1000, 0x4000, 0x40000, 0x200000
AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = -100, 0x8000, 0x1

PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_SECCOMP, PR_CAPBSET_DROP = 1, 4, 22, 24
PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 38, 47

# System call numbers the filter names, from the kernel's asm/unistd_64.h (x86_64) and asm-generic/unistd.h
# (aarch64); tests/test_sandbox_escapes.py checks them against the headers where they are installed.
_COMMON_NR = {"pidfd_send_signal": 424, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
              "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
              "pidfd_open": 434, "clone3": 435, "pidfd_getfd": 438, "mount_setattr": 442, "quotactl_fd": 443}
SYSCALL_NR = {
    "x86_64": {**_COMMON_NR, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312,
               "setns": 308, "unshare": 272, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161,
               "bpf": 321, "perf_event_open": 298, "userfaultfd": 323, "keyctl": 250, "add_key": 248,
               "request_key": 249, "init_module": 175, "finit_module": 313, "delete_module": 176, "kexec_load": 246,
               "kexec_file_load": 320, "reboot": 169, "swapon": 167, "swapoff": 168, "acct": 163,
               "settimeofday": 164, "clock_settime": 227, "clock_adjtime": 305, "adjtimex": 159,
               "sethostname": 170, "setdomainname": 171, "iopl": 172, "ioperm": 173, "modify_ldt": 154,
               "open_by_handle_at": 304, "name_to_handle_at": 303, "quotactl": 179, "vhangup": 153,
               "fanotify_init": 300, "setsid": 112, "setpgid": 109, "execve": 59, "execveat": 322,
               "lookup_dcookie": 212, "syslog": 103, "uselib": 134, "fork": 57, "vfork": 58, "clone": 56,
               "socket": 41, "kill": 62, "tkill": 200, "tgkill": 234, "rt_sigqueueinfo": 129,
               "rt_tgsigqueueinfo": 297},
    "aarch64": {**_COMMON_NR, "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "kcmp": 272,
                "setns": 268, "unshare": 97, "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51,
                "bpf": 280, "perf_event_open": 241, "userfaultfd": 282, "keyctl": 219, "add_key": 217,
                "request_key": 218, "init_module": 105, "finit_module": 273, "delete_module": 106,
                "kexec_load": 104, "kexec_file_load": 294, "reboot": 142, "swapon": 224, "swapoff": 225,
                "acct": 89, "settimeofday": 170, "clock_settime": 112, "clock_adjtime": 266, "adjtimex": 171,
                "sethostname": 161, "setdomainname": 162, "open_by_handle_at": 265, "name_to_handle_at": 264,
                "quotactl": 60, "vhangup": 58, "fanotify_init": 262, "setsid": 157, "setpgid": 154,
                "execve": 221, "execveat": 281, "lookup_dcookie": 18, "syslog": 116, "clone": 220,
                "socket": 198, "kill": 129, "tkill": 130, "tgkill": 131, "rt_sigqueueinfo": 138,
                "rt_tgsigqueueinfo": 240},
}
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
# Refused with EPERM: other processes (tracing, reading, comparing, pidfds), namespaces and mounts, leaving the
# process group (it would escape the group kill), exec (a fresh image could be 32-bit), kernel state (keys,
# modules, BPF, perf, clocks, swap, reboot, log), raw I/O ports, file handles (they bypass path checks), io_uring
# (its operations bypass this filter) and userfaultfd.
_DENIED = ("ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_open", "pidfd_getfd",
           "pidfd_send_signal", "setns", "unshare", "mount", "umount2", "pivot_root", "chroot", "open_tree",
           "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "setsid", "setpgid", "execve",
           "execveat", "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key", "init_module",
           "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff", "acct",
           "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "sethostname", "setdomainname", "syslog",
           "iopl", "ioperm", "modify_ldt", "uselib", "open_by_handle_at", "name_to_handle_at", "quotactl",
           "quotactl_fd", "vhangup", "fanotify_init", "lookup_dcookie", "io_uring_setup", "io_uring_enter",
           "io_uring_register")
# Signals: allowed only when the first argument (pid or tgid) is the program's own pid.
_SIGNAL_CALLS = ("kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo")
AF_UNIX = 1

_SECCOMP_RET_KILL_PROCESS, _SECCOMP_RET_ALLOW, _SECCOMP_RET_ERRNO = 0x80000000, 0x7FFF0000, 0x00050000
_BPF_LD_ABS, _BPF_JEQ, _BPF_JGE, _BPF_JSET, _BPF_RET = 0x20, 0x15, 0x35, 0x45, 0x06
_X32_SYSCALL_BIT = 0x40000000
# seccomp_data offsets: nr, arch, then the low 32 bits of args[0] (little-endian): the kernel reads these
# arguments (pid, flags, domain) as 32-bit values, so the high half does not matter.
_NR, _ARCH, _ARG0 = 0, 4, 16

_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        import ctypes
        _LIBC = ctypes.CDLL(None, use_errno=True)
        _LIBC.syscall.restype = ctypes.c_long
    return _LIBC


def _c(name: str, *args) -> int:
    """Call a libc function; -1 raises OSError with its errno."""
    import ctypes
    ret = getattr(_libc(), name)(*args)
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")
    return ret


def _syscall(nr: int, *args) -> int:
    import ctypes
    return _c("syscall", ctypes.c_long(nr), *(ctypes.c_long(a) if isinstance(a, int) else a for a in args))


def _prctl(option: int, arg2: int = 0) -> None:
    import ctypes
    ul = ctypes.c_ulong
    _c("prctl", ctypes.c_int(option), ul(arg2), ul(0), ul(0), ul(0))


def _unshare(flags: int) -> bool:
    try:
        _c("unshare", flags)
        return True
    except OSError:
        return False


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    import ctypes
    raw = [None if s is None else s.encode() for s in (source, target, fstype, data)]
    _c("mount", raw[0], raw[1], raw[2], ctypes.c_ulong(flags), raw[3])


def _mount_setattr(path: str, flags: int, attr_set: int, attr_clr: int = 0) -> None:
    import ctypes
    attr = (ctypes.c_uint64 * 4)(attr_set, attr_clr, 0, 0)
    _syscall(442, AT_FDCWD, path.encode(), flags, ctypes.byref(attr), ctypes.sizeof(attr))


def _detach(target: str) -> None:
    """Lazily unmount what a failed step mounted on target (umount2 with MNT_DETACH)."""
    try:
        _c("umount2", target.encode(), 2)
    except OSError:
        pass


def _ns_inode(kind: str) -> int | None:
    try:
        return os.stat(f"/proc/self/ns/{kind}").st_ino
    except OSError:
        return None


def _close_fds_except(*keep: int) -> None:
    """Close every descriptor from 3 up but `keep`: a forked child inherits all of its parent's."""
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, max(low + 1, os.sysconf("SC_OPEN_MAX")))


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
    """Run role() and exit this process with its code, as the interpreter would, and never return: a forked child
    must not unwind into its parent's code."""
    code = 1
    try:
        code = role() or 0
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException:  # noqa: BLE001 - report like an uncaught exception: traceback on stderr, status 1
        try:
            sys.excepthook(*sys.exc_info())
        except BaseException:  # noqa: BLE001
            pass
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:  # noqa: BLE001 - e.g. the output file is at its size limit
                pass
        os._exit(code)


# ---------------------------------------------------------------------------------------------- seccomp filter


def _assemble(code: list) -> list[tuple[int, int, int, int]]:
    """Classic BPF from (op, k, jump_if_true, jump_if_false) tuples and label strings; a jump target is a label
    or None for the next instruction."""
    where, count = {}, 0
    for item in code:
        if isinstance(item, str):
            where[item] = count
        else:
            count += 1
    out: list[tuple[int, int, int, int]] = []
    for item in code:
        if isinstance(item, str):
            continue
        op, k, yes, no = item
        here = len(out) + 1
        jt, jf = (0 if t is None else where[t] - here for t in (yes, no))
        if not (0 <= jt <= 255 and 0 <= jf <= 255):
            raise ValueError("seccomp jump out of range")
        out.append((op, jt, jf, k))
    return out


def seccomp_program(arch: str, pid: int) -> list[tuple[int, int, int, int]]:
    """The filter for a program whose pid is `pid` on `arch` (x86_64 or aarch64), as (code, jt, jf, k)."""
    nr = SYSCALL_NR[arch]
    code: list = [(_BPF_LD_ABS, _ARCH, None, None), (_BPF_JEQ, AUDIT_ARCH[arch], None, "kill"),
                  (_BPF_LD_ABS, _NR, None, None), (_BPF_JGE, _X32_SYSCALL_BIT, "kill", None)]
    code += [(_BPF_JEQ, nr[name], "eperm", None) for name in _DENIED if name in nr]
    code += [(_BPF_JEQ, nr[name], "eagain", None) for name in ("fork", "vfork") if name in nr]
    code += [(_BPF_JEQ, nr["clone3"], "enosys", None),  # libc then falls back to clone, whose flags we can read
             (_BPF_JEQ, nr["clone"], "clone", None), (_BPF_JEQ, nr["socket"], "socket", None)]
    code += [(_BPF_JEQ, nr[name], "signal", None) for name in _SIGNAL_CALLS]
    code += [(_BPF_RET, _SECCOMP_RET_ALLOW, None, None),
             "clone", (_BPF_LD_ABS, _ARG0, None, None), (_BPF_JSET, _NEW_NAMESPACES, "eperm", None),
             (_BPF_JSET, CLONE_THREAD, "allow", "eagain"),  # threads yes, processes no
             "socket", (_BPF_LD_ABS, _ARG0, None, None), (_BPF_JEQ, AF_UNIX, "eperm", "allow"),
             "signal", (_BPF_LD_ABS, _ARG0, None, None), (_BPF_JEQ, pid & 0xFFFFFFFF, "allow", "eperm"),
             "allow", (_BPF_RET, _SECCOMP_RET_ALLOW, None, None),
             "eperm", (_BPF_RET, _SECCOMP_RET_ERRNO | 1, None, None),
             "eagain", (_BPF_RET, _SECCOMP_RET_ERRNO | 11, None, None),
             "enosys", (_BPF_RET, _SECCOMP_RET_ERRNO | 38, None, None),
             "kill", (_BPF_RET, _SECCOMP_RET_KILL_PROCESS, None, None)]
    return _assemble(code)


def _install_seccomp() -> bool:
    import ctypes
    arch = os.uname().machine
    if arch not in SYSCALL_NR:
        return False
    prog = seccomp_program(arch, os.getpid())

    class Insn(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Insn))]

    insns = (Insn * len(prog))(*[Insn(*p) for p in prog])
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _c("prctl", ctypes.c_int(PR_SET_SECCOMP), ctypes.c_ulong(2), ctypes.byref(Prog(len(prog), insns)),
       ctypes.c_ulong(0), ctypes.c_ulong(0))  # SECCOMP_MODE_FILTER; this process has a single thread
    return True


# ---------------------------------------------------------------------------------------------------- Landlock

_LL_WRITE_FILE, _LL_REFER, _LL_TRUNCATE = 1 << 1, 1 << 13, 1 << 14
_LL_MAKE_AND_REMOVE = sum(1 << b for b in range(4, 13))  # remove dir/file, make char/dir/reg/sock/fifo/block/sym


def _landlock(work: str, block_tcp: bool) -> int:
    """Confine writes (and, with block_tcp, TCP bind/connect) to the working directory and /dev/null; on ABI 6+
    also scope signals and abstract Unix sockets to the sandbox. Returns the Landlock ABI, 0 where absent."""
    import ctypes
    try:
        abi = _syscall(444, None, 0, 1)  # landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    except OSError:
        return 0
    dev_null = _LL_WRITE_FILE | (_LL_TRUNCATE if abi >= 3 else 0)
    writes = dev_null | _LL_MAKE_AND_REMOVE | (_LL_REFER if abi >= 2 else 0)
    attr = (ctypes.c_uint64 * 3)(writes, 3 if block_tcp and abi >= 4 else 0, 3 if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    ruleset = _syscall(444, ctypes.byref(attr), size, 0)
    try:
        for path, access in ((work, writes), ("/dev/null", dev_null)):
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                _syscall(445, ruleset, 1, ctypes.byref(PathBeneath(access, fd)), 0)  # LANDLOCK_RULE_PATH_BENEATH
            finally:
                os.close(fd)
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        _syscall(446, ruleset, 0)  # landlock_restrict_self
    finally:
        os.close(ruleset)
    return abi


# ------------------------------------------------------------------------------------------- private file system


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


def _unprivileged_uid(cfg: dict, paths: list[str]) -> int:
    """The harness's unprivileged uid when this process is root and that uid can read the interpreter's folders;
    else this process's own uid (root then runs the program, without capabilities)."""
    want = cfg["uid"]
    return want if os.geteuid() == 0 and want >= 0 and all(_others_can_read(p) for p in paths) else os.geteuid()


def _python_paths() -> list[str]:
    """The interpreter's import folders (and zips), without those inside another one."""
    paths = sorted({os.path.realpath(p) for p in sys.path if p and os.path.exists(p)})
    return [p for p in paths if not any(p.startswith(q + "/") for q in paths)]


def _closed_ancestor(path: str) -> str | None:
    """The topmost folder above path that other users cannot enter, or None."""
    parts = path.split("/")
    for i in range(2, len(parts)):
        folder = "/".join(parts[:i])
        if not os.stat(folder).st_mode & stat.S_IXOTH:
            return folder
    return None


def _expose(paths: list[str], keep: str) -> None:
    """Make paths reachable by other uids: each closed folder above them (root's home for pyenv) is replaced by a
    tmpfs holding bind mounts of those paths only, and of `keep` (the working directory) if it lies there too;
    everything else in that folder is hidden from the sandbox."""
    by_folder: dict[str, list[str]] = {}
    for path in paths:
        folder = _closed_ancestor(path)
        if folder:
            by_folder.setdefault(folder, []).append(path)
    for folder, inner in by_folder.items():
        if keep.startswith(folder + "/"):
            inner.append(keep)
        # O_PATH descriptors keep the originals reachable once the tmpfs covers them.
        held = [(p, os.path.isdir(p), os.open(p, os.O_PATH | os.O_CLOEXEC)) for p in inner]
        try:
            _mount("tmpfs", folder, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
            for path, is_dir, fd in held:
                os.makedirs(path if is_dir else os.path.dirname(path), 0o755, exist_ok=True)
                if not is_dir:
                    open(path, "a").close()
                _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        except OSError:
            _detach(folder)
            raise
        finally:
            for _, _, fd in held:
                os.close(fd)


_DEV_NODES = ("null", "zero", "full", "random", "urandom")


def _minimal_dev() -> None:
    """/dev with only the harmless character devices (no GPUs, disks, ttys or shared memory)."""
    held = {n: os.open(f"/dev/{n}", os.O_PATH | os.O_CLOEXEC) for n in _DEV_NODES if os.path.exists(f"/dev/{n}")}
    try:
        _mount("tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k")
        for name, fd in held.items():
            open(f"/dev/{name}", "w").close()
            _mount(f"/proc/self/fd/{fd}", f"/dev/{name}", None, MS_BIND)
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
            os.symlink(target, f"/dev/{name}")
    except OSError:
        _detach("/dev")
        raise
    finally:
        for fd in held.values():
            os.close(fd)


def _mount_points() -> list[str]:
    import re
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
        # "\040" is a space in a mount point
        return [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), ln.split()[4]) for ln in fh]


def read_only_everywhere(use_mount_setattr: bool = True) -> None:
    """Every mount of this mount namespace read-only: mount_setattr (Linux 5.12+), else one remount per mount
    point, keeping its other flags (a user namespace may not clear them)."""
    if use_mount_setattr:
        try:
            _mount_setattr("/", AT_RECURSIVE, MOUNT_ATTR_RDONLY)
            return
        except OSError as exc:
            if exc.errno != 38:  # ENOSYS: an older kernel
                raise
    keep = {os.ST_NOSUID: MS_NOSUID, os.ST_NODEV: MS_NODEV, os.ST_NOEXEC: MS_NOEXEC, os.ST_NOATIME: MS_NOATIME,
            os.ST_NODIRATIME: MS_NODIRATIME, os.ST_RELATIME: MS_RELATIME}
    for point in _mount_points():
        try:
            vfs = os.statvfs(point).f_flag
        except OSError:  # covered by a later mount (e.g. /dev/shm under the minimal /dev): out of reach anyway
            continue
        flags = sum(ms for st, ms in keep.items() if vfs & st)
        _mount(None, point, None, flags | MS_BIND | MS_REMOUNT | MS_RDONLY)


def _private_workdir(work: str, uid: int, cap_bytes: int) -> None:
    """A fresh tmpfs over the working directory, holding main.py and at most cap_bytes of files."""
    with open(os.path.join(work, "main.py"), "rb") as fh:
        program = fh.read()
    options = f"size={cap_bytes},nr_inodes=4096,mode=0700" + (f",uid={uid},gid={uid}" if os.geteuid() == 0 else "")
    _mount("tmpfs", work, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, options)
    path = os.path.join(work, "main.py")
    with open(path, "wb") as fh:
        fh.write(program)
    if os.geteuid() == 0:
        os.chown(path, uid, uid)


def _private_filesystem(cfg: dict, pid_ns: bool) -> tuple[bool, int]:
    """Build the sandbox's view of the file system in this (new) mount namespace. Returns (writes are confined to
    the working directory, the uid the program runs as)."""
    work, want = cfg["work"], cfg["uid"]
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates to the harness's mounts
    paths = _python_paths()
    if os.geteuid() == 0 and want >= 0 and not all(_others_can_read(p) for p in paths):
        try:
            _expose(paths, work)
        except OSError:
            pass
    uid = _unprivileged_uid(cfg, paths)
    try:
        _minimal_dev()
    except OSError:
        pass
    if pid_ns:
        try:  # a /proc of this PID namespace: no other process is visible
            _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        except OSError:
            pass
    try:
        read_only_everywhere()
        _private_workdir(work, uid, cfg["workdir_bytes"])
        confined = True
    except OSError:
        confined = False
    os.chdir(work)  # the new tmpfs, not the folder it covers
    return confined, uid


# ---------------------------------------------------------------------------------------------- the processes


def _enter_pid_namespace() -> bool:
    """Make this process's next child the init of a new PID namespace (inside a new user namespace when not root,
    so that the init may build the other namespaces). True when a PID namespace was made."""
    if os.geteuid() == 0:
        return _unshare(CLONE_NEWPID)
    uid, gid = os.getuid(), os.getgid()
    for flags in (CLONE_NEWUSER | CLONE_NEWPID, CLONE_NEWUSER):
        if _unshare(flags):
            try:
                for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                    with open(f"/proc/self/{name}", "w") as fh:
                        fh.write(text)
            except OSError:
                pass
            return bool(flags & CLONE_NEWPID)
    return False


def _limits(cfg: dict) -> None:
    import resource
    cpu_s = cfg["cpu_s"]
    for res, soft, hard in [(resource.RLIMIT_CPU, cpu_s, cpu_s + 1), (resource.RLIMIT_AS, cfg["memory"], cfg["memory"]),
                            (resource.RLIMIT_FSIZE, cfg["fsize"], cfg["fsize"]), (resource.RLIMIT_CORE, 0, 0)]:
        try:
            resource.setrlimit(res, (soft, hard))
        except (ValueError, OSError):
            pass


def _drop_privileges(uid: int) -> None:
    """Empty bounding and ambient sets (while CAP_SETPCAP is still held), switch to uid when root, then empty the
    permitted, effective and inheritable sets (setuid clears them for root; a user namespace's root keeps them)."""
    import ctypes
    try:
        with open("/proc/sys/kernel/cap_last_cap") as fh:
            last_cap = int(fh.read())
    except (OSError, ValueError):
        last_cap = 63
    for cap in range(last_cap + 1):
        try:
            _prctl(PR_CAPBSET_DROP, cap)
        except OSError:
            break  # no CAP_SETPCAP: nothing to drop
    try:
        _prctl(PR_CAP_AMBIENT, 4)  # PR_CAP_AMBIENT_CLEAR_ALL
    except OSError:
        pass
    if os.geteuid() == 0 and uid != 0:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()
    _c("capset", ctypes.byref(header), ctypes.byref(data))
    _prctl(PR_SET_DUMPABLE, 0)  # its memory and /proc entries stay closed to other processes of its uid


def _no_capabilities() -> bool:
    """No effective, permitted, inheritable or ambient capability. The bounding set only limits what an exec could
    gain (exec is refused, no_new_privs is set); it is emptied too where this process may (root, user namespace)."""
    with open("/proc/self/status") as fh:
        caps = {k: int(v, 16) for k, v in (ln.split(":") for ln in fh if ln.startswith("Cap"))}
    return len(caps) == 5 and not any(v for k, v in caps.items() if k != "CapBnd")


def _network_is_private(port: int | None, host_net: int | None) -> bool:
    """True when this process's network namespace is not the harness's and the harness's loopback is out of
    reach (port: a listener the outer runner holds on 127.0.0.1 in the harness's namespace)."""
    import socket
    own = _ns_inode("net")
    if own is None or host_net is None or own == host_net:
        return False
    if port:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return False
        except OSError:
            pass
    return True


def _program(cfg: dict, port: int | None, host_net: int | None, pid_ns: bool, confined: bool, uid: int,
             status_w: int) -> int:
    """The sandboxed process: confine itself, report what holds, run main.py, and only if that returned report the
    end of the tests."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # without a PID namespace, nothing else ends it with init
    _limits(cfg)
    _drop_privileges(uid)
    net = _network_is_private(port, host_net)
    try:
        landlock = _landlock(".", block_tcp=not net)  # ".": the folders above it are closed to this uid
    except OSError:
        landlock = 0
    try:
        seccomp = _install_seccomp()
    except OSError:
        seccomp = False
    nproc = False
    if not seccomp and os.geteuid() != 0:  # fallback: no new processes (nor threads) for this uid
        import resource
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
        nproc = True
    isolation = {"net": net, "fs": confined or landlock > 0, "pid": pid_ns, "uid": os.geteuid(),
                 "caps": _no_capabilities(), "seccomp": seccomp, "landlock": landlock, "nproc": nproc}
    os.write(status_w, json.dumps(isolation).encode() + b"\n")
    with open("main.py", "rb") as fh:
        code = compile(fh.read(), "main.py", "exec")
    exec(code, {"__name__": "__candidate__", "__builtins__": __builtins__})
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - output past its size limit does not decide the result: the tests do
            pass
    os.write(status_w, _END_OF_TESTS)
    os._exit(0)


def _init(cfg: dict, port: int | None, host_net: int | None, pid_ns: bool, status_w: int, init_w: int) -> int:
    """First process of the sandbox: private namespaces and file system, then the program's process; reports its
    wait status on init_w."""
    _close_fds_except(status_w, init_w)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the sandbox dies with the outer runner (its parent)
    _prctl(PR_SET_DUMPABLE, 0)
    _unshare(CLONE_NEWNET)
    _unshare(CLONE_NEWIPC | CLONE_NEWUTS)
    confined, uid = False, None
    if _unshare(CLONE_NEWNS):
        try:
            confined, uid = _private_filesystem(cfg, pid_ns)
        except OSError:
            pass
    if uid is None:
        uid = _unprivileged_uid(cfg, _python_paths())
    if not confined and uid != os.geteuid():  # no private tmpfs: the program's folder must be its own
        try:
            for path in (cfg["work"], os.path.join(cfg["work"], "main.py")):
                os.chown(path, uid, uid)
        except OSError:
            uid = os.geteuid()
    child = os.fork()
    if child == 0:
        os.close(init_w)
        _guarded(lambda: _program(cfg, port, host_net, pid_ns, confined, uid, status_w))
    os.close(status_w)
    _, wait_status = os.waitpid(child, 0)
    os.write(init_w, str(wait_status).encode())
    return 0


def _listener():
    """A socket listening on 127.0.0.1 in the harness's network namespace, or None."""
    import socket
    try:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        return sock
    except OSError:
        return None


def _outer(cfg: dict) -> int:
    """The runner process the harness started: fork the sandbox, wait for it, then report with the token."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # a harness that dies takes its sandboxes along
    if os.getppid() != cfg["parent"]:
        return 1
    _prctl(PR_SET_DUMPABLE, 0)
    listener = _listener()
    port = listener.getsockname()[1] if listener else None
    host_net = _ns_inode("net")
    pid_ns = _enter_pid_namespace()
    init_r, init_w = os.pipe()
    status_r, status_w = os.pipe()
    init = os.fork()
    if init == 0:
        os.setpgid(0, 0)  # a group of its own for init and program: the outer runner kills it as a whole
        _guarded(lambda: _init(cfg, port, host_net, pid_ns, status_w, init_w))
    os.close(init_w)
    os.close(status_w)
    if listener:
        listener.close()
    timed_out = []

    def on_timeout(_sig, _frame):
        timed_out.append(True)
        _kill_group(init)

    signal.signal(signal.SIGALRM, on_timeout)
    signal.setitimer(signal.ITIMER_REAL, cfg["timeout_s"])
    done = _relay(status_r, cfg["result_fd"])
    signal.setitimer(signal.ITIMER_REAL, 0)
    # Kill what is left of the group while init is unreaped (so its pid, the group id, cannot be reused); in a PID
    # namespace, init's exit waits until every process of the namespace is gone.
    os.waitid(os.P_PID, init, os.WEXITED | os.WNOWAIT)
    _kill_group(init)
    os.waitpid(init, 0)
    status_text = _read_pipe(init_r)
    report = {"status": int(status_text) if status_text.strip().isdigit() else None, "done": done,
              "timeout": bool(timed_out)}
    token = os.read(cfg["token_fd"], 64)  # only now, so no process of the sandbox ever held it
    os.write(cfg["result_fd"], json.dumps(report).encode() + b"\n" + token)
    return 0


def _relay(status_r: int, result_fd: int) -> bool:
    """Read the program process's pipe until it closes: forward its first line (what isolation holds, written
    before the program ran) to the harness at once, so a run that times out still has it; keep only the end of
    the rest, so a program that floods the pipe costs no memory. True when it ended with the end-of-tests mark."""
    head, tail, forwarded = b"", b"", False
    while chunk := os.read(status_r, 65536):
        if forwarded:
            tail = (tail + chunk)[-len(_END_OF_TESTS):]
            continue
        head += chunk
        line, newline, rest = head.partition(b"\n")
        if newline or len(head) > 65536:
            if newline and _json_dict(line) is not None:
                os.write(result_fd, line + b"\n")
            else:
                os.write(result_fd, b"\n")
            forwarded, tail = True, rest[-len(_END_OF_TESTS):]
    if not forwarded:
        os.write(result_fd, b"\n")
    return tail == _END_OF_TESTS


if __name__ == "__main__":
    _guarded(lambda: _outer(json.loads(sys.argv[1])))
