"""A cgroup per sample, made and removed by the harness, joined by the sandbox's init before the program starts.

memory.max counts what RLIMIT_AS misses (shmem, memfd files, SysV segments, tmpfs pages) and pids.max counts
every thread however it was made. cgroup v2 where the harness may create a child with the memory and pids
controllers (root, or a subtree delegated to its user); else cgroup v1's memory and pids hierarchies (a hybrid
host, as root); None where neither can be made (a container without delegation, a plain user): the sandbox then
falls back to seccomp and RLIMIT_NPROC (see sandbox/limits.py and sandbox/seccomp.py).
"""
from __future__ import annotations

import errno
import os
import signal
import time
from dataclasses import dataclass

_CONTROLLERS = ("memory", "pids")


@dataclass
class SampleCgroup:
    version: int  # 2, or 1 (then paths holds the memory and the pids cgroup)
    paths: list[str]

    def join(self) -> None:
        """Move the calling process into the cgroup(s); its children are born there."""
        for path in self.paths:
            _write(os.path.join(path, "cgroup.procs"), "0")

    def oom_kills(self) -> int:
        """Processes the kernel killed at the memory limit."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            with open(os.path.join(self.paths[0], name)) as fh:
                fields = dict(line.split() for line in fh if len(line.split()) == 2)
            return int(fields.get("oom_kill", 0))
        except (OSError, ValueError):
            return 0

    def peak_bytes(self) -> int | None:
        """Most memory the sample's processes held at once (None where the kernel does not say)."""
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        try:
            with open(os.path.join(self.paths[0], name)) as fh:
                return int(fh.read())
        except (OSError, ValueError):
            return None

    def remove(self) -> None:
        """Kill whatever is left in the cgroup(s), then remove them."""
        for path in self.paths:
            _empty(path)
            for _ in range(100):  # a killed task leaves its cgroup a moment after it is reaped
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        break
                    time.sleep(0.01)


def create(memory_bytes: int, tasks: int) -> SampleCgroup | None:
    """A fresh cgroup limited to memory_bytes (no swap) and tasks threads, or None where none can be made."""
    import secrets  # here: the runner imports this module only to join
    name = f"latentmas-{os.getpid()}-{secrets.token_hex(4)}"
    for make in (_create_v2, _create_v1):
        try:
            group = make(name, memory_bytes, tasks)
        except OSError:
            group = None
        if group is not None:
            return group
    return None


def _write(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


def _empty(path: str) -> None:
    if os.path.exists(os.path.join(path, "cgroup.kill")):
        try:
            _write(os.path.join(path, "cgroup.kill"), "1")
            return
        except OSError:
            pass
    try:
        with open(os.path.join(path, "cgroup.procs")) as fh:
            pids = [int(p) for p in fh.read().split()]
    except (OSError, ValueError):
        return
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(root inside the hierarchy, mount point, fstype, options) of every cgroup mount."""
    out = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) >= 5 and len(tail) >= 3 and tail[0] in ("cgroup", "cgroup2"):
                out.append((fields[3], fields[4], tail[0], set(tail[2].split(","))))
    return out


def _own_cgroups() -> dict[str, str]:
    """This process's cgroup path per hierarchy: "" for v2, else the v1 controller list ("memory", "pids", ...)."""
    out = {}
    with open("/proc/self/cgroup") as fh:
        for line in fh:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                out[c] = path
    return out


def _inside(mount_root: str, mount_point: str, path: str) -> str | None:
    """Where a hierarchy path lies under a mount of it, or None when the mount does not show it."""
    rel = os.path.relpath(path, mount_root)
    return None if rel.startswith("..") else os.path.normpath(os.path.join(mount_point, rel))


def _create_v2(name: str, memory_bytes: int, tasks: int) -> SampleCgroup | None:
    own = _own_cgroups().get("")
    mount = next(((r, p) for r, p, kind, _ in _mounts() if kind == "cgroup2"), None)
    if own is None or mount is None:
        return None
    here = _inside(*mount, own)
    if here is None:
        return None
    # The nearest folder at or above ours whose children get both controllers and where we may create one (a
    # folder holding processes cannot hand controllers down, except the hierarchy's root).
    folder = here
    while True:
        if _hands_down(folder, at_root=folder == mount[1]) and os.access(folder, os.W_OK):
            break
        if folder == mount[1] or not folder.startswith(mount[1]):
            return None
        folder = os.path.dirname(folder)
    path = os.path.join(folder, name)
    os.mkdir(path)
    group = SampleCgroup(2, [path])
    try:
        _write(os.path.join(path, "memory.max"), str(memory_bytes))
        if os.path.exists(os.path.join(path, "memory.swap.max")):
            _write(os.path.join(path, "memory.swap.max"), "0")
        _write(os.path.join(path, "pids.max"), str(tasks))
    except OSError:
        group.remove()
        return None
    return group


def _hands_down(folder: str, at_root: bool) -> bool:
    """True when children of folder get the memory and pids controllers (enabling them at the root if needed)."""
    try:
        with open(os.path.join(folder, "cgroup.subtree_control")) as fh:
            enabled = set(fh.read().split())
        if set(_CONTROLLERS) <= enabled:
            return True
        with open(os.path.join(folder, "cgroup.controllers")) as fh:
            available = set(fh.read().split())
        if not at_root or not set(_CONTROLLERS) <= available:
            return False
        _write(os.path.join(folder, "cgroup.subtree_control"), " ".join(f"+{c}" for c in _CONTROLLERS))
        return True
    except OSError:
        return False


def _create_v1(name: str, memory_bytes: int, tasks: int) -> SampleCgroup | None:
    own = _own_cgroups()
    paths = []
    for controller in _CONTROLLERS:
        mount = next(((r, p) for r, p, kind, opts in _mounts() if kind == "cgroup" and controller in opts), None)
        where = _inside(*mount, own[controller]) if mount and controller in own else None
        if where is None or not os.access(where, os.W_OK):
            return None
        paths.append(os.path.join(where, name))
    made = []
    try:
        for path in paths:
            os.mkdir(path)
            made.append(path)
        memory, pids = paths
        _write(os.path.join(memory, "memory.limit_in_bytes"), str(memory_bytes))
        if os.path.exists(os.path.join(memory, "memory.memsw.limit_in_bytes")):  # with swap accounting: no swap
            _write(os.path.join(memory, "memory.memsw.limit_in_bytes"), str(memory_bytes))
        _write(os.path.join(pids, "pids.max"), str(tasks))
    except OSError:
        SampleCgroup(1, made).remove()
        return None
    return SampleCgroup(1, paths)
