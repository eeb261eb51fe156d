"""The code sandbox against programs written to escape it: foreign system call ABIs, namespaces, signals and
tracing aimed at the harness, writes outside the working directory, and theft of the end-of-tests proof. Every
hostile program runs once, in parallel, in a module fixture; a test that needs a kernel feature or root skips
with the reason when the sandbox reports that layer missing."""
from __future__ import annotations

import ctypes
import os
import platform
import re
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

import code_eval
from code_eval import ExecResult, evaluate_many, run_program
from sandbox import mounts, seccomp

TIMEOUT_S, MEMORY_MB = 5.0, 256
X86_64 = platform.machine() == "x86_64"
MARK = uuid.uuid4().hex[:12]  # names this run's files, so nothing found later belongs to another run

# Machine code called through ctypes: `mov eax, N; int 0x80; ret` makes i386 system call N from a 64-bit process.
_I386_CALL = """import ctypes, mmap
buf = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
buf.write(bytes([0xB8, {nr}, 0, 0, 0, 0xCD, 0x80, 0xC3]))
call = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(buf)))
print("returned", call(), flush=True)
"""
_WHO = "import os\nprint(os.stat('/proc/self/ns/pid').st_ino, os.getpid(), flush=True)\n"


def _programs(ctx: dict) -> dict[str, str]:
    harness, victim_pid, port = ctx["harness"], ctx["victim_pid"], ctx["port"]
    denied = {n: seccomp.SYSCALL_NR.get(platform.machine(), {}).get(n) for n in seccomp.DENIED}
    return {
        "probe": _WHO + "print(open('/proc/self/status').read())",
        "i386_fork": _WHO + _I386_CALL.format(nr=2),  # i386 fork: the measured escape left a child running
        "i386_getpid": _I386_CALL.format(nr=20),
        "x32_getpid": "import ctypes\nlibc = ctypes.CDLL(None)\nprint('returned', libc.syscall(0x40000000 | 39))",
        "setns": f"""import ctypes, os, socket
libc = ctypes.CDLL(None, use_errno=True)
for pid in ("1", "self", "{harness}", str(os.getppid())):
    try:
        fd = os.open(f"/proc/{{pid}}/ns/net", os.O_RDONLY)
    except OSError as exc:
        print("open", pid, exc.errno)
        continue
    ok = libc.setns(fd, 0x40000000)
    print("setns", pid, ok, ctypes.get_errno())
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2)
    print("CONNECTED")
except OSError as exc:
    print("connect refused", exc)
""",
        "netns": "import os\nprint(os.stat('/proc/self/ns/net').st_ino)",
        "signals": f"""import os, signal
for target in (os.getppid(), {victim_pid}, 1):
    try:
        os.kill(target, signal.SIGKILL)
        print("KILLED", target)
    except OSError as exc:
        print("refused", target, type(exc).__name__)
try:
    os.kill({harness}, 0)  # signal 0: only asks whether a signal would be allowed
    print("REACHABLE harness")
except OSError as exc:
    print("refused harness", type(exc).__name__)
if {ctx["kill_all"]}:
    try:
        os.kill(-1, signal.SIGKILL)
        print("KILLED -1")
    except OSError as exc:
        print("refused -1", type(exc).__name__)
os.kill(os.getpid(), 0)  # signals to itself stay allowed
""",
        "ptrace": f"""import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long] * 4
for pid in (os.getppid(), {harness}, {victim_pid}):  # PTRACE_SEIZE: were it allowed, it would not stop the target
    print("ptrace", pid, libc.ptrace(0x4206, pid, 0, 0), ctypes.get_errno())
buf = ctypes.create_string_buffer(8)
local = (ctypes.c_void_p * 2)(ctypes.cast(buf, ctypes.c_void_p), 8)
remote = (ctypes.c_void_p * 2)(0x400000, 8)
print("vm_readv", libc.process_vm_readv({harness}, local, 1, remote, 1, 0), ctypes.get_errno())
try:
    open("/proc/{harness}/mem", "rb")
    print("OPENED mem")
except OSError as exc:
    print("mem refused", exc.errno)
""",
        "writes": f"""import os
attempts = {{
    "victim append": lambda: open({ctx["victim_file"]!r}, "a").write("x"),
    "victim create": lambda: open({ctx["victim_dir"]!r} + "/new", "w").write("x"),
    "victim delete": lambda: os.remove({ctx["victim_file"]!r}),
    "victim chmod": lambda: os.chmod({ctx["victim_file"]!r}, 0o600),
    "tmp": lambda: open("/tmp/latentmas-escape-{MARK}", "w").write("x"),
    "var tmp": lambda: open("/var/tmp/latentmas-escape-{MARK}", "w").write("x"),
    "dev shm": lambda: open("/dev/shm/latentmas-escape-{MARK}", "w").write("x"),
}}
for name, attempt in attempts.items():
    try:
        attempt()
        print("WROTE", name)
    except OSError as exc:
        print("refused", name, exc.errno)
with open("inside.txt", "w") as fh:  # its own folder stays writable
    fh.write("ok")
assert open("inside.txt").read() == "ok"
open(os.devnull, "w").write("fine")
""",
        "secret": f"""try:
    print("READ", open({ctx["secret_file"]!r}).read())
except OSError as exc:
    print("refused", exc.errno)
""",
        "token_theft": """import gc, os, re, sys
found = set()
def scan(value):
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, str):
        found.update(re.findall(r"[0-9a-f]{32}", value))
frame = sys._getframe()
while frame is not None:  # the runner's frames: its locals and globals
    for space in (frame.f_locals, frame.f_globals):
        for value in list(space.values()):
            scan(value)
            if isinstance(value, dict):
                for inner in list(value.values()):
                    scan(inner)
    frame = frame.f_back
for obj in gc.get_objects():  # every container in the process
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple, set)) else ()
    for value in list(items):
        scan(value)
for name in ("cmdline", "environ"):
    try:
        scan(open(f"/proc/self/{name}", "rb").read())
    except OSError:
        pass
print("candidates", len(found), flush=True)
for fd in range(3, 64):
    for candidate in found:
        try:
            os.write(fd, candidate.encode())
        except OSError:
            pass
os._exit(0)
""",
        "privileges": """import os
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
print({k: v.strip() for k, v in status.items() if k.startswith(("Cap", "NoNewPrivs", "Seccomp"))})
print("uid", os.getuid(), os.geteuid())
for attempt in (lambda: os.setuid(0), lambda: os.setgid(0), lambda: os.chroot("/")):
    try:
        attempt()
        print("GAINED")
    except OSError as exc:
        print("refused", type(exc).__name__)
""",
        # Only under the filter: without it, sethostname(NULL, 0) as root would blank the machine's host name.
        "denied_calls": f"""import ctypes
if "Seccomp:\\t2" in open("/proc/self/status").read():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.argtypes = [ctypes.c_long] * 6
    for name, nr in {denied!r}.items():
        if nr is not None:
            print(name, libc.syscall(nr, 0, 0, 0, 0, 0), ctypes.get_errno())
""",
        "exec_and_unix": """import os, socket
try:
    os.execv("/bin/true", ["true"])
except OSError as exc:
    print("exec refused", type(exc).__name__)
try:
    socket.socket(socket.AF_UNIX)
    print("UNIX SOCKET")
except OSError as exc:
    print("unix refused", type(exc).__name__)
a, b = socket.socketpair()  # what asyncio needs stays possible
a.send(b"x")
assert b.recv(1) == b"x"
""",
        "proc_view": "import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()), os.getpid())",
        "fill_disk": """import errno
written = 0
try:
    while True:
        with open(f"f{written}", "wb") as fh:
            fh.write(b"x" * (1 << 20))
        written += 1
except OSError as exc:
    print("stopped", written, errno.errorcode[exc.errno])
""",
        "network_other": """import fcntl, socket, struct
try:
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("8.8.8.8", 53))
    print("SENT")
except OSError as exc:
    print("udp refused", exc.errno)
try:  # SIOCSIFFLAGS: bring the loopback up
    fcntl.ioctl(socket.socket(socket.AF_INET, socket.SOCK_DGRAM), 0x8914, struct.pack("16sH22x", b"lo", 1))
    print("LO UP")
except OSError as exc:
    print("lo refused", exc.errno)
""",
    }


@pytest.fixture(scope="module")
def ctx():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.setblocking(False)
    victim = subprocess.Popen(["sleep", "120"])  # a root process the sandbox must not reach
    victim_dir = tempfile.mkdtemp(prefix="latentmas-victim-")
    os.chmod(victim_dir, 0o777)  # open to every uid: only the sandbox's own layers can refuse
    victim_file = os.path.join(victim_dir, "file")
    Path(victim_file).write_text("original")
    os.chmod(victim_file, 0o666)
    secret_dir = tempfile.mkdtemp(prefix="latentmas-secret-")
    os.chmod(secret_dir, 0o755)
    secret_file = os.path.join(secret_dir, "secret")
    Path(secret_file).write_text("root only")
    os.chmod(secret_file, 0o600)
    probe = run_program(_WHO, timeout_s=TIMEOUT_S, memory_mb=MEMORY_MB)
    # kill(-1) is only tried inside a PID namespace: were the filter broken, it would reach nothing else there.
    context = {"harness": os.getpid(), "victim_pid": victim.pid, "port": server.getsockname()[1],
               "victim_dir": victim_dir, "victim_file": victim_file, "secret_file": secret_file,
               "kill_all": bool(probe.isolation.get("pid")), "server": server, "victim": victim}
    try:
        names = list(_programs(context))
        results = evaluate_many([_programs(context)[n] for n in names], workers=4, timeout_s=TIMEOUT_S,
                                memory_mb=MEMORY_MB)
        context["results"] = dict(zip(names, results))
        yield context
    finally:
        server.close()
        victim.kill()
        victim.wait()
        for folder in (victim_dir, secret_dir):
            subprocess.run(["rm", "-rf", folder], check=False)
        for leftover in (f"/tmp/latentmas-escape-{MARK}", f"/var/tmp/latentmas-escape-{MARK}",
                         f"/dev/shm/latentmas-escape-{MARK}"):
            if os.path.exists(leftover):
                os.remove(leftover)


def _result(ctx: dict, name: str) -> ExecResult:
    return ctx["results"][name]


def _need(res: ExecResult, layer: str) -> None:
    if not res.isolation.get(layer):
        pytest.skip(f"the sandbox reports no {layer} layer on this machine: {res.isolation or res.detail}")


def _sandbox_processes(pid_ns: int) -> list[int]:
    """Processes of the host still in the given PID namespace."""
    left = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{entry}/ns/pid").st_ino == pid_ns:
                left.append(int(entry))
        except OSError:
            pass
    return left


@pytest.mark.skipif(not X86_64, reason="i386 `int 0x80` and x32 exist only on x86_64")
@pytest.mark.parametrize("name", ["i386_fork", "i386_getpid", "x32_getpid"])
def test_foreign_syscall_abi_kills_the_program(ctx: dict, name: str) -> None:
    res = _result(ctx, name)
    _need(res, "seccomp")
    assert res.status == "killed" and "SIGSYS" in res.detail, (res.status, res.detail, res.stdout)
    assert "returned" not in res.stdout
    if name == "i386_fork" and res.isolation.get("pid"):
        assert _sandbox_processes(int(res.stdout.split()[0])) == []


def test_setns_does_not_reach_the_harness_network(ctx: dict) -> None:
    res = _result(ctx, "setns")
    _need(res, "net")
    assert res.passed, res.detail
    assert "CONNECTED" not in res.stdout and "connect refused" in res.stdout
    assert not re.search(r"^setns \S+ 0 ", res.stdout, re.MULTILINE), res.stdout  # every setns failed
    with pytest.raises(BlockingIOError):
        ctx["server"].accept()  # and nothing ever connected to the harness's listener


def test_network_isolated_means_another_namespace(ctx: dict) -> None:
    res = _result(ctx, "netns")
    assert res.passed
    own = os.stat("/proc/self/ns/net").st_ino
    assert res.network_isolated is (int(res.stdout) != own)


def test_signals_reach_nothing_outside(ctx: dict) -> None:
    res = _result(ctx, "signals")
    _need(res, "seccomp")
    assert res.passed, res.detail
    assert "KILLED" not in res.stdout and "REACHABLE" not in res.stdout, res.stdout
    assert ctx["victim"].poll() is None  # the root process it aimed at is alive, and so are we
    if not ctx["kill_all"]:
        pytest.skip("no PID namespace here, so kill(-1) was not tried")
    assert "refused -1" in res.stdout


def test_ptrace_and_memory_of_other_processes(ctx: dict) -> None:
    res = _result(ctx, "ptrace")
    _need(res, "seccomp")
    assert res.passed, res.detail
    calls = [ln for ln in res.stdout.splitlines() if ln.startswith(("ptrace", "vm_readv"))]
    assert len(calls) == 4 and all(ln.endswith(" -1 1") for ln in calls), calls  # each failed with EPERM
    assert "OPENED" not in res.stdout


def test_no_write_outside_the_working_directory(ctx: dict) -> None:
    res = _result(ctx, "writes")
    _need(res, "fs")
    assert res.passed, res.stderr
    assert "WROTE" not in res.stdout, res.stdout
    assert Path(ctx["victim_file"]).read_text() == "original"
    assert os.listdir(ctx["victim_dir"]) == ["file"] and os.stat(ctx["victim_file"]).st_mode & 0o777 == 0o666
    for folder in ("/tmp", "/var/tmp", "/dev/shm"):
        assert not os.path.exists(f"{folder}/latentmas-escape-{MARK}")


def test_root_only_files_are_unreadable(ctx: dict) -> None:
    res = _result(ctx, "secret")
    if os.geteuid() != 0 or res.isolation.get("uid") == 0:
        pytest.skip(f"the program runs as uid {res.isolation.get('uid')}: no unprivileged uid to test")
    assert res.passed and "READ" not in res.stdout, res.stdout


def test_token_theft_finds_nothing_to_steal(ctx: dict) -> None:
    res = _result(ctx, "token_theft")
    assert not res.passed and res.status == "exited_early", (res.status, res.detail, res.stdout)


def test_privileges_are_gone(ctx: dict) -> None:
    res = _result(ctx, "privileges")
    assert res.passed, res.stderr
    fields = eval(res.stdout.splitlines()[0])  # noqa: S307 - our own program printed a dict literal
    sets = ("CapEff", "CapPrm", "CapInh", "CapAmb") + (("CapBnd",) if os.geteuid() == 0 else ())
    assert res.isolation["caps"] and all(int(fields[k], 16) == 0 for k in sets), fields
    assert fields["NoNewPrivs"] == "1"
    if res.isolation.get("seccomp"):
        assert fields["Seccomp"] == "2"
    assert "GAINED" not in res.stdout
    if os.geteuid() == 0 and res.isolation.get("uid") != 0:
        assert "uid 65534 65534" in res.stdout


def test_denied_system_calls_fail_with_eperm(ctx: dict) -> None:
    res = _result(ctx, "denied_calls")
    _need(res, "seccomp")
    assert res.passed, res.stderr
    lines = [ln.split() for ln in res.stdout.splitlines()]
    assert len(lines) >= 50
    assert [ln for ln in lines if ln[1:] != ["-1", "1"]] == []  # every one: -1 with EPERM


def test_exec_and_unix_sockets_refused(ctx: dict) -> None:
    res = _result(ctx, "exec_and_unix")
    _need(res, "seccomp")
    assert res.passed, res.stderr
    assert "exec refused PermissionError" in res.stdout and "unix refused PermissionError" in res.stdout


def test_disk_use_is_bounded(ctx: dict) -> None:
    res = _result(ctx, "fill_disk")
    _need(res, "fs")
    assert res.passed, res.stderr
    _, written, error = res.stdout.split()
    assert error in ("ENOSPC", "EDQUOT") and int(written) <= code_eval.WORKDIR_CAP_BYTES >> 20


def test_no_route_out_and_no_interface_changes(ctx: dict) -> None:
    res = _result(ctx, "network_other")
    _need(res, "net")
    assert res.passed, res.stderr
    assert "SENT" not in res.stdout and "LO UP" not in res.stdout, res.stdout


def test_proc_shows_only_the_sandbox(ctx: dict) -> None:
    res = _result(ctx, "proc_view")
    _need(res, "pid")
    assert res.passed
    pids, own = res.stdout.rsplit("]", 1)
    assert eval(pids + "]") == [1, int(own)]  # noqa: S307 - the init and the program, nothing of the host


def test_every_layer_holds_as_root_here(ctx: dict) -> None:
    """On a root machine with a recent kernel (the CI VM) every layer must hold, not merely skip."""
    iso = _result(ctx, "probe").isolation
    if os.geteuid() != 0:
        pytest.skip("not root: the user-namespace layers depend on the distribution's policy")
    assert {k: iso.get(k) for k in ("net", "fs", "pid", "caps", "seccomp")} == dict.fromkeys(
        ("net", "fs", "pid", "caps", "seccomp"), True), iso
    assert iso["uid"] == code_eval.UNPRIVILEGED_ID


# ------------------------------------------------------------------------------------------- pieces in isolation


def _header_numbers(path: str) -> dict[str, int]:
    text = Path(path).read_text()
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"#define __NR_(\w+)\s+(\d+)\b", text)}


@pytest.mark.parametrize(("arch", "header"), [("x86_64", "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
                                              ("aarch64", "/usr/include/asm-generic/unistd.h")])
def test_syscall_numbers_match_the_kernel_headers(arch: str, header: str) -> None:
    if not os.path.exists(header):
        pytest.skip(f"{header} is not installed (linux-libc-dev)")
    known = _header_numbers(header)
    table = seccomp.SYSCALL_NR[arch]
    assert {n: nr for n, nr in table.items() if known.get(n) != nr} == {}


@pytest.mark.parametrize("arch", sorted(seccomp.SYSCALL_NR))
def test_seccomp_program_assembles(arch: str) -> None:
    prog = seccomp.seccomp_program(arch, 2)
    assert prog[1][3] == seccomp.AUDIT_ARCH[arch] and prog[1][2] > 0  # a foreign ABI jumps to the kill
    assert prog[-1] == (0x06, 0, 0, 0x80000000)  # SECCOMP_RET_KILL_PROCESS
    assert len(prog) < 4096


def test_read_only_fallback_without_mount_setattr() -> None:
    """The remount-per-mount-point path for kernels before 5.12, in a forked child's own mount namespace."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make a mount namespace")
    probe = tempfile.mkdtemp(prefix="latentmas-ro-")
    host_mnt = os.stat("/proc/self/ns/mnt").st_ino
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 3
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.unshare(0x00020000) == 0 and os.stat("/proc/self/ns/mnt").st_ino != host_mnt:
                mounts.mount(None, "/", None, mounts.MS_REC | mounts.MS_PRIVATE)
                mounts.read_only_everywhere(use_mount_setattr=False)
                try:
                    open(os.path.join(probe, "x"), "w").close()
                    code = 1
                except OSError as exc:
                    code = 0 if exc.errno == 30 else 2  # EROFS
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    try:
        assert os.WIFEXITED(status)
        if os.WEXITSTATUS(status) == 3:
            pytest.skip("this kernel refused a mount namespace")
        assert os.WEXITSTATUS(status) == 0
        open(os.path.join(probe, "host"), "w").close()  # the host's view stayed writable
    finally:
        subprocess.run(["rm", "-rf", probe], check=False)
