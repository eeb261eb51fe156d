"""Calls into the kernel through libc (ctypes), for the sandbox's runner: errors come back as OSError."""
from __future__ import annotations

import os

PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_SECCOMP, PR_CAPBSET_DROP = 1, 4, 22, 24
PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 38, 47

_LIBC = None


def libc():
    global _LIBC
    if _LIBC is None:
        import ctypes
        _LIBC = ctypes.CDLL(None, use_errno=True)
        _LIBC.syscall.restype = ctypes.c_long
    return _LIBC


def call(name: str, *args) -> int:
    """Call a libc function; -1 raises OSError with its errno."""
    import ctypes
    ret = getattr(libc(), name)(*args)
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")
    return ret


def syscall(nr: int, *args) -> int:
    import ctypes
    return call("syscall", ctypes.c_long(nr), *(ctypes.c_long(a) if isinstance(a, int) else a for a in args))


def prctl(option: int, arg2: int = 0) -> None:
    import ctypes
    ul = ctypes.c_ulong
    call("prctl", ctypes.c_int(option), ul(arg2), ul(0), ul(0), ul(0))


def close_fds_except(*keep: int) -> None:
    """Close every descriptor from 3 up but `keep`: a forked child inherits all of its parent's."""
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, max(low + 1, os.sysconf("SC_OPEN_MAX")))
