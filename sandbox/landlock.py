"""Landlock (where the kernel has it): writes confined to the working directory, TCP and signals scoped."""
from __future__ import annotations

import os

from sandbox.kernel import PR_SET_NO_NEW_PRIVS, prctl, syscall

_LL_WRITE_FILE, _LL_REFER, _LL_TRUNCATE = 1 << 1, 1 << 13, 1 << 14
_LL_MAKE_AND_REMOVE = sum(1 << b for b in range(4, 13))  # remove dir/file, make char/dir/reg/sock/fifo/block/sym


def restrict(work: str, block_tcp: bool) -> int:
    """Confine writes (and, with block_tcp, TCP bind/connect) to the working directory and /dev/null; on ABI 6+
    also scope signals and abstract Unix sockets to the sandbox. Returns the Landlock ABI, 0 where absent."""
    import ctypes
    try:
        abi = syscall(444, None, 0, 1)  # landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    except OSError:
        return 0
    dev_null = _LL_WRITE_FILE | (_LL_TRUNCATE if abi >= 3 else 0)
    writes = dev_null | _LL_MAKE_AND_REMOVE | (_LL_REFER if abi >= 2 else 0)
    attr = (ctypes.c_uint64 * 3)(writes, 3 if block_tcp and abi >= 4 else 0, 3 if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    ruleset = syscall(444, ctypes.byref(attr), size, 0)
    try:
        for path, access in ((work, writes), ("/dev/null", dev_null)):
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                syscall(445, ruleset, 1, ctypes.byref(PathBeneath(access, fd)), 0)  # LANDLOCK_RULE_PATH_BENEATH
            finally:
                os.close(fd)
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        syscall(446, ruleset, 0)  # landlock_restrict_self
    finally:
        os.close(ruleset)
    return abi

