"""The sandbox's private file system, built by its init in a new mount namespace: every mount read-only, a minimal
/dev, a /proc of the PID namespace, a private size-capped tmpfs as the working directory, and root's closed home
replaced by a tmpfs holding only the interpreter."""
from __future__ import annotations

import os
import stat
import sys

from sandbox.kernel import call, syscall

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 0x1, 0x2, 0x4, 0x8, 0x20
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE, MS_RELATIME = 0x400, 0x800, 0x1000, 0x4000, 0x40000, 0x200000
AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = -100, 0x8000, 0x1


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    import ctypes
    raw = [None if s is None else s.encode() for s in (source, target, fstype, data)]
    call("mount", raw[0], raw[1], raw[2], ctypes.c_ulong(flags), raw[3])


def _mount_setattr(path: str, flags: int, attr_set: int, attr_clr: int = 0) -> None:
    import ctypes
    attr = (ctypes.c_uint64 * 4)(attr_set, attr_clr, 0, 0)
    syscall(442, AT_FDCWD, path.encode(), flags, ctypes.byref(attr), ctypes.sizeof(attr))


def _detach(target: str) -> None:
    """Lazily unmount what a failed step mounted on target (umount2 with MNT_DETACH)."""
    try:
        call("umount2", target.encode(), 2)
    except OSError:
        pass


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


def unprivileged_uid(cfg: dict, paths: list[str]) -> int:
    """The harness's unprivileged uid when this process is root and that uid can read the interpreter's folders;
    else this process's own uid (root then runs the program, without capabilities)."""
    want = cfg["uid"]
    return want if os.geteuid() == 0 and want >= 0 and all(_others_can_read(p) for p in paths) else os.geteuid()


def python_paths() -> list[str]:
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
            mount("tmpfs", folder, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
            for path, is_dir, fd in held:
                os.makedirs(path if is_dir else os.path.dirname(path), 0o755, exist_ok=True)
                if not is_dir:
                    open(path, "a").close()
                mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
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
        mount("tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k")
        for name, fd in held.items():
            open(f"/dev/{name}", "w").close()
            mount(f"/proc/self/fd/{fd}", f"/dev/{name}", None, MS_BIND)
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
        mount(None, point, None, flags | MS_BIND | MS_REMOUNT | MS_RDONLY)


def _private_workdir(work: str, uid: int, cap_bytes: int) -> None:
    """A fresh tmpfs over the working directory, holding main.py and at most cap_bytes of files."""
    with open(os.path.join(work, "main.py"), "rb") as fh:
        program = fh.read()
    options = f"size={cap_bytes},nr_inodes=4096,mode=0700" + (f",uid={uid},gid={uid}" if os.geteuid() == 0 else "")
    mount("tmpfs", work, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, options)
    path = os.path.join(work, "main.py")
    with open(path, "wb") as fh:
        fh.write(program)
    if os.geteuid() == 0:
        os.chown(path, uid, uid)


def private_filesystem(cfg: dict, pid_ns: bool) -> tuple[bool, int]:
    """Build the sandbox's view of the file system in this (new) mount namespace. Returns (writes are confined to
    the working directory, the uid the program runs as)."""
    work, want = cfg["work"], cfg["uid"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates to the harness's mounts
    paths = python_paths()
    if os.geteuid() == 0 and want >= 0 and not all(_others_can_read(p) for p in paths):
        try:
            _expose(paths, work)
        except OSError:
            pass
    uid = unprivileged_uid(cfg, paths)
    try:
        _minimal_dev()
    except OSError:
        pass
    if pid_ns:
        try:  # a /proc of this PID namespace: no other process is visible
            mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
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

