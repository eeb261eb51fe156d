"""The sandbox's seccomp filter: system call tables for x86_64 and aarch64, the classic-BPF program and its
installation. A hand-written filter, so no system libseccomp is needed."""
from __future__ import annotations

import os

from sandbox.kernel import PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, call, prctl
from sandbox.namespaces import CLONE_THREAD, NEW_NAMESPACES

# System call numbers the filter names, from the kernel's asm/unistd_64.h (x86_64) and asm-generic/unistd.h
# (aarch64); tests/test_sandbox_escapes.py checks them against the headers where they are installed.
_COMMON_NR = {"pidfd_send_signal": 424, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
              "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
              "pidfd_open": 434, "clone3": 435, "pidfd_getfd": 438, "mount_setattr": 442, "quotactl_fd": 443,
              "memfd_secret": 447}
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
               "rt_tgsigqueueinfo": 297, "memfd_create": 319, "shmget": 29, "shmat": 30, "shmctl": 31,
               "shmdt": 67, "msgget": 68, "msgsnd": 69, "msgrcv": 70, "msgctl": 71},
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
                "rt_tgsigqueueinfo": 240, "memfd_create": 279, "shmget": 194, "shmctl": 195, "shmat": 196,
                "shmdt": 197, "msgget": 186, "msgctl": 187, "msgrcv": 188, "msgsnd": 189},
}
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
# Refused with EPERM: other processes (tracing, reading, comparing, pidfds), namespaces and mounts, leaving the
# process group (it would escape the group kill), exec (a fresh image could be 32-bit), kernel state (keys,
# modules, BPF, perf, clocks, swap, reboot, log), raw I/O ports, file handles (they bypass path checks), io_uring
# (its operations bypass this filter) and userfaultfd.
DENIED = ("ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_open", "pidfd_getfd",
           "pidfd_send_signal", "setns", "unshare", "mount", "umount2", "pivot_root", "chroot", "open_tree",
           "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "setsid", "setpgid", "execve",
           "execveat", "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key", "init_module",
           "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff", "acct",
           "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "sethostname", "setdomainname", "syslog",
           "iopl", "ioperm", "modify_ldt", "uselib", "open_by_handle_at", "name_to_handle_at", "quotactl",
           "quotactl_fd", "vhangup", "fanotify_init", "lookup_dcookie", "io_uring_setup", "io_uring_enter",
           "io_uring_register")
# Refused where no cgroup bounds the sample's memory: memory that lives outside the process's address space, so
# RLIMIT_AS does not count it (memfd files, SysV shared memory and message queues).
SHARED_MEMORY = ("memfd_create", "memfd_secret", "shmget", "shmat", "shmctl", "shmdt", "msgget", "msgsnd", "msgrcv",
                 "msgctl")
# Signals: allowed only when the first argument (pid or tgid) is the program's own pid.
_SIGNAL_CALLS = ("kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo")
AF_UNIX = 1

_SECCOMP_RET_KILL_PROCESS, _SECCOMP_RET_ALLOW, _SECCOMP_RET_ERRNO = 0x80000000, 0x7FFF0000, 0x00050000
_BPF_LD_ABS, _BPF_JEQ, _BPF_JGE, _BPF_JSET, _BPF_RET = 0x20, 0x15, 0x35, 0x45, 0x06
_X32_SYSCALL_BIT = 0x40000000
# seccomp_data offsets: nr, arch, then the low 32 bits of args[0] (little-endian): the kernel reads these
# arguments (pid, flags, domain) as 32-bit values, so the high half does not matter.
_NR, _ARCH, _ARG0 = 0, 4, 16

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


def seccomp_program(arch: str, pid: int, shared_memory: bool = False) -> list[tuple[int, int, int, int]]:
    """The filter for a program whose pid is `pid` on `arch` (x86_64 or aarch64), as (code, jt, jf, k).
    shared_memory=False also refuses SHARED_MEMORY (where no cgroup counts that memory)."""
    nr = SYSCALL_NR[arch]
    code: list = [(_BPF_LD_ABS, _ARCH, None, None), (_BPF_JEQ, AUDIT_ARCH[arch], None, "kill"),
                  (_BPF_LD_ABS, _NR, None, None), (_BPF_JGE, _X32_SYSCALL_BIT, "kill", None)]
    refused = DENIED + (() if shared_memory else SHARED_MEMORY)
    code += [(_BPF_JEQ, nr[name], "eperm", None) for name in refused if name in nr]
    code += [(_BPF_JEQ, nr[name], "eagain", None) for name in ("fork", "vfork") if name in nr]
    code += [(_BPF_JEQ, nr["clone3"], "enosys", None),  # libc then falls back to clone, whose flags we can read
             (_BPF_JEQ, nr["clone"], "clone", None), (_BPF_JEQ, nr["socket"], "socket", None)]
    code += [(_BPF_JEQ, nr[name], "signal", None) for name in _SIGNAL_CALLS]
    code += [(_BPF_RET, _SECCOMP_RET_ALLOW, None, None),
             "clone", (_BPF_LD_ABS, _ARG0, None, None), (_BPF_JSET, NEW_NAMESPACES, "eperm", None),
             (_BPF_JSET, CLONE_THREAD, "allow", "eagain"),  # threads yes, processes no
             "socket", (_BPF_LD_ABS, _ARG0, None, None), (_BPF_JEQ, AF_UNIX, "eperm", "allow"),
             "signal", (_BPF_LD_ABS, _ARG0, None, None), (_BPF_JEQ, pid & 0xFFFFFFFF, "allow", "eperm"),
             "allow", (_BPF_RET, _SECCOMP_RET_ALLOW, None, None),
             "eperm", (_BPF_RET, _SECCOMP_RET_ERRNO | 1, None, None),
             "eagain", (_BPF_RET, _SECCOMP_RET_ERRNO | 11, None, None),
             "enosys", (_BPF_RET, _SECCOMP_RET_ERRNO | 38, None, None),
             "kill", (_BPF_RET, _SECCOMP_RET_KILL_PROCESS, None, None)]
    return _assemble(code)


def install(shared_memory: bool = False) -> bool:
    """Install the filter on this (single-threaded) process; False on an architecture without a table."""
    import ctypes
    arch = os.uname().machine
    if arch not in SYSCALL_NR:
        return False
    prog = seccomp_program(arch, os.getpid(), shared_memory)

    class Insn(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Insn))]

    insns = (Insn * len(prog))(*[Insn(*p) for p in prog])
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    call("prctl", ctypes.c_int(PR_SET_SECCOMP), ctypes.c_ulong(2), ctypes.byref(Prog(len(prog), insns)),
       ctypes.c_ulong(0), ctypes.c_ulong(0))  # SECCOMP_MODE_FILTER; this process has a single thread
    return True

