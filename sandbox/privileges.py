"""Dropping every privilege in the program's process: capabilities, the root uid, dumpability."""
from __future__ import annotations

import os

from sandbox.kernel import PR_CAP_AMBIENT, PR_CAPBSET_DROP, PR_SET_DUMPABLE, call, prctl


def drop_privileges(uid: int) -> None:
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
            prctl(PR_CAPBSET_DROP, cap)
        except OSError:
            break  # no CAP_SETPCAP: nothing to drop
    try:
        prctl(PR_CAP_AMBIENT, 4)  # PR_CAP_AMBIENT_CLEAR_ALL
    except OSError:
        pass
    if os.geteuid() == 0 and uid != 0:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()
    call("capset", ctypes.byref(header), ctypes.byref(data))
    prctl(PR_SET_DUMPABLE, 0)  # its memory and /proc entries stay closed to other processes of its uid


def no_capabilities() -> bool:
    """No effective, permitted, inheritable or ambient capability. The bounding set only limits what an exec could
    gain (exec is refused, no_new_privs is set); it is emptied too where this process may (root, user namespace)."""
    with open("/proc/self/status") as fh:
        caps = {k: int(v, 16) for k, v in (ln.split(":") for ln in fh if ln.startswith("Cap"))}
    return len(caps) == 5 and not any(v for k, v in caps.items() if k != "CapBnd")
