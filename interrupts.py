"""Stopping from outside: Ctrl-C (SIGINT) and SIGTERM (what SLURM sends at a time limit, and kill's default) stop
a run or a sweep the same way.

Both raise KeyboardInterrupt in the main thread, so the one interrupt path of runner.loop handles them: the items
finished so far stay on disk, a partial summary.json is written, the resume command is printed, the run
directory's lock is released (a sweep also writes sweep.md). The exit code tells them apart as shells do:
130 (128 + SIGINT) for Ctrl-C, 143 (128 + SIGTERM) for SIGTERM. A second signal, or one that arrives while the
model loads, also raises KeyboardInterrupt; run.py ends those quietly in one line (no traceback).
"""
from __future__ import annotations

import signal
import threading

_first: int | None = None  # the signal that first asked this process to stop


def _stop(signum, frame):
    global _first
    if _first is None:
        _first = signum
    raise KeyboardInterrupt


def install() -> dict:
    """Route SIGINT and SIGTERM to KeyboardInterrupt (main thread only; elsewhere nothing changes). A signal the
    process was started ignoring stays ignored: a shell starts background jobs (`cmd &`) with SIGINT ignored, and
    nohup-style wrappers ignore others on purpose. Returns the handlers it replaced, for restore()."""
    global _first
    _first = None
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)
            if signal.getsignal(s) is not signal.SIG_IGN}


def restore(previous: dict) -> None:
    for s, handler in previous.items():
        signal.signal(s, handler)


def received() -> int | None:
    """The first stop signal since install(), or None."""
    return _first


def exit_code(code: int) -> int:
    """An interrupted run's exit code (130) as the signal that stopped it: 143 for SIGTERM."""
    return 128 + signal.SIGTERM if code == 130 and _first == signal.SIGTERM else code


def interrupted_code() -> int:
    """The exit code of a process stopped before its loop could say so (a signal while loading, a second one)."""
    return 128 + (_first or signal.SIGINT)
