"""Resource limits of the program's process (setrlimit). What they miss, a cgroup bounds (sandbox/cgroups.py):
RLIMIT_AS does not count memory held outside the address space (memfd files, SysV shared memory), and
RLIMIT_NPROC counts every process of a user, not of one sample."""
from __future__ import annotations

import resource

# Threads (and processes, where they are allowed) one sample may run at once, its main thread included.
TASKS_MAX = 64
FILES_MAX = 256  # open descriptors: each socket pair can hold kernel buffers that no other limit counts


def set_limits(cfg: dict) -> None:
    """CPU seconds, address space, largest file, no core files, descriptors, no POSIX message queue memory."""
    cpu_s = cfg["cpu_s"]
    for res, soft, hard in [(resource.RLIMIT_CPU, cpu_s, cpu_s + 1), (resource.RLIMIT_AS, cfg["memory"], cfg["memory"]),
                            (resource.RLIMIT_FSIZE, cfg["fsize"], cfg["fsize"]), (resource.RLIMIT_CORE, 0, 0),
                            (resource.RLIMIT_NOFILE, FILES_MAX, FILES_MAX), (resource.RLIMIT_MSGQUEUE, 0, 0)]:
        try:
            resource.setrlimit(res, (soft, hard))
        except (ValueError, OSError):
            pass


def cap_tasks(tasks: int) -> bool:
    """RLIMIT_NPROC = tasks for this process's user: where no cgroup's pids.max holds, this is what caps threads.
    The kernel counts every task of the real uid (in this user namespace: only the sandbox's when the harness is
    not root; uid 65534 host-wide when it is) and does not apply the cap to uid 0. False when refused."""
    try:
        resource.setrlimit(resource.RLIMIT_NPROC, (tasks, tasks))
        return True
    except (ValueError, OSError):
        return False
