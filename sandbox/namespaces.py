"""Namespaces: the PID namespace (in a user namespace when not root) and the checks that the network is private."""
from __future__ import annotations

import os

from sandbox.kernel import call

CLONE_THREAD = 0x00010000
CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x02000000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
NEW_NAMESPACES = CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | \
    CLONE_NEWNET


def unshare(flags: int) -> bool:
    try:
        call("unshare", flags)
        return True
    except OSError:
        return False


def ns_inode(kind: str) -> int | None:
    try:
        return os.stat(f"/proc/self/ns/{kind}").st_ino
    except OSError:
        return None


def enter_pid_namespace() -> bool:
    """Make this process's next child the init of a new PID namespace (inside a new user namespace when not root,
    so that the init may build the other namespaces). True when a PID namespace was made."""
    if os.geteuid() == 0:
        return unshare(CLONE_NEWPID)
    uid, gid = os.getuid(), os.getgid()
    for flags in (CLONE_NEWUSER | CLONE_NEWPID, CLONE_NEWUSER):
        if unshare(flags):
            try:
                for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                    with open(f"/proc/self/{name}", "w") as fh:
                        fh.write(text)
            except OSError:
                pass
            return bool(flags & CLONE_NEWPID)
    return False


def listener():
    """A socket listening on 127.0.0.1 in the harness's network namespace, or None."""
    import socket
    try:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        return sock
    except OSError:
        return None


def network_is_private(port: int | None, host_net: int | None) -> bool:
    """True when this process's network namespace is not the harness's and the harness's loopback is out of
    reach (port: a listener the outer runner holds on 127.0.0.1 in the harness's namespace)."""
    import socket
    own = ns_inode("net")
    if own is None or host_net is None or own == host_net:
        return False
    if port:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return False
        except OSError:
            pass
    return True
