"""The sandbox's processes, run inside `python -I -B code_eval.py CONFIG` and never in the harness: the outer runner
(in the harness's namespaces: timeout, token, report), the init (namespaces, file system, cgroup) and the
confinement of the program's process. What the program's process then runs is code_eval's program runner."""
from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass

from sandbox import landlock, limits, mounts, namespaces, seccomp
from sandbox.cgroups import SampleCgroup
from sandbox.host import kill_group, read_pipe
from sandbox.kernel import PR_SET_DUMPABLE, PR_SET_PDEATHSIG, close_fds_except, prctl
from sandbox.privileges import drop_privileges, no_capabilities
from sandbox.verdicts import json_dict

END_OF_TESTS = b"\x00end of tests\n"


@dataclass
class Sandbox:
    """What the init learned while building the sandbox, handed to the program's process."""
    cfg: dict
    port: int | None  # the outer runner's listener on the harness's 127.0.0.1
    host_net: int | None  # the harness's network namespace
    pid_ns: bool
    status_w: int  # the pipe to the outer runner: isolation line, then the end-of-tests mark
    confined: bool = False  # private read-only file system with a private working directory
    uid: int = -1
    cgroup: int = 0  # the cgroup version the sandbox joined, 0 if none


def confine(box: Sandbox) -> dict:
    """Confine the program's process (limits, privileges, Landlock, seccomp) and return what holds."""
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # without a PID namespace, nothing else ends it with init
    limits.set_limits(box.cfg)
    drop_privileges(box.uid)
    net = namespaces.network_is_private(box.port, box.host_net)
    try:
        ll = landlock.restrict(".", block_tcp=not net)  # ".": the folders above it are closed to this uid
    except OSError:
        ll = 0
    try:  # without a cgroup, memory held outside the address space is refused outright
        filtered = seccomp.install(shared_memory=bool(box.cgroup))
    except OSError:
        filtered = False
    nproc = None  # RLIMIT_NPROC, where set
    if not filtered and os.geteuid() != 0:  # no filter: no new processes (nor threads) for this uid
        nproc = 0 if limits.cap_tasks(0) else None
    elif not box.cgroup:  # no pids.max: RLIMIT_NPROC caps the threads
        nproc = limits.TASKS_MAX if limits.cap_tasks(limits.TASKS_MAX) else None
    return {"net": net, "fs": box.confined or ll > 0, "pid": box.pid_ns, "uid": os.geteuid(),
            "caps": no_capabilities(), "seccomp": filtered, "landlock": ll, "nproc": nproc, "cgroup": box.cgroup,
            "shm_refused": filtered and not box.cgroup}


def exit_with(role: Callable[[], int | None]) -> None:
    """Run role() in a forked child and exit with its code: the child never unwinds into its parent's code. The
    program's own exits are translated by code_eval's runner; here anything raised is a failure of the sandbox."""
    code = 1
    try:
        code = role() or 0
    except BaseException:  # noqa: BLE001 - report like an uncaught exception: traceback on stderr, status 1
        try:
            sys.excepthook(*sys.exc_info())
        except BaseException:  # noqa: BLE001
            pass
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:  # noqa: BLE001
                pass
        os._exit(code)


def _init(box: Sandbox, init_w: int, program: Callable[[Sandbox], None]) -> int:
    """First process of the sandbox: its cgroup, private namespaces and file system, then the program's process;
    reports its wait status on init_w."""
    cfg = box.cfg
    close_fds_except(box.status_w, init_w)
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the sandbox dies with the outer runner (its parent)
    prctl(PR_SET_DUMPABLE, 0)
    if cfg.get("cgroup"):
        try:  # before anything else, so every process of the sample is born inside it
            SampleCgroup(cfg["cgroup"]["version"], cfg["cgroup"]["paths"]).join()
            box.cgroup = cfg["cgroup"]["version"]
        except OSError:
            box.cgroup = 0
    namespaces.unshare(namespaces.CLONE_NEWNET)
    namespaces.unshare(namespaces.CLONE_NEWIPC | namespaces.CLONE_NEWUTS)
    uid = None
    if namespaces.unshare(namespaces.CLONE_NEWNS):
        try:
            box.confined, uid = mounts.private_filesystem(cfg, box.pid_ns)
        except OSError:
            pass
    if uid is None:
        uid = mounts.unprivileged_uid(cfg, mounts.python_paths())
    if not box.confined and uid != os.geteuid():  # no private tmpfs: the program's folder must be its own
        try:
            for path in (cfg["work"], os.path.join(cfg["work"], "main.py")):
                os.chown(path, uid, uid)
        except OSError:
            uid = os.geteuid()
    box.uid = uid
    child = os.fork()
    if child == 0:
        os.close(init_w)
        program(box)  # never returns
        os._exit(1)
    os.close(box.status_w)
    _, wait_status = os.waitpid(child, 0)
    os.write(init_w, str(wait_status).encode())
    return 0


def outer(cfg: dict, program: Callable[[Sandbox], None]) -> int:
    """The runner process the harness started: fork the sandbox, wait for it, then report with the token.
    program(box) runs in the program's process and never returns."""
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # a harness that dies takes its sandboxes along
    if os.getppid() != cfg["parent"]:
        return 1
    listener = namespaces.listener()
    port = listener.getsockname()[1] if listener else None
    host_net = namespaces.ns_inode("net")
    pid_ns = namespaces.enter_pid_namespace()
    # Only now: a process that is not dumpable cannot write its own /proc/self/uid_map (the user namespace of a
    # harness that is not root would keep no uid, and its tmpfs would refuse every new file with EOVERFLOW).
    prctl(PR_SET_DUMPABLE, 0)
    init_r, init_w = os.pipe()
    status_r, status_w = os.pipe()
    init = os.fork()
    if init == 0:
        os.setpgid(0, 0)  # a group of its own for init and program: the outer runner kills it as a whole
        exit_with(lambda: _init(Sandbox(cfg, port, host_net, pid_ns, status_w), init_w, program))
    os.close(init_w)
    os.close(status_w)
    if listener:
        listener.close()
    timed_out = []

    def on_timeout(_sig, _frame):
        timed_out.append(True)
        kill_group(init)

    signal.signal(signal.SIGALRM, on_timeout)
    signal.setitimer(signal.ITIMER_REAL, cfg["timeout_s"])
    done = _relay(status_r, cfg["result_fd"])
    signal.setitimer(signal.ITIMER_REAL, 0)
    # Kill what is left of the group while init is unreaped (so its pid, the group id, cannot be reused); in a PID
    # namespace, init's exit waits until every process of the namespace is gone.
    os.waitid(os.P_PID, init, os.WEXITED | os.WNOWAIT)
    kill_group(init)
    os.waitpid(init, 0)
    status_text = read_pipe(init_r)
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
            tail = (tail + chunk)[-len(END_OF_TESTS):]
            continue
        head += chunk
        line, newline, rest = head.partition(b"\n")
        if newline or len(head) > 65536:
            if newline and json_dict(line) is not None:
                os.write(result_fd, line + b"\n")
            else:
                os.write(result_fd, b"\n")
            forwarded, tail = True, rest[-len(END_OF_TESTS):]
    if not forwarded:
        os.write(result_fd, b"\n")
    return tail == END_OF_TESTS
