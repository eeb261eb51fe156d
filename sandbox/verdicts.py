"""From what the outer runner reported (and the cgroup's OOM count) to a sample's verdict."""
from __future__ import annotations

import json
import os
import signal

DETAIL_CHARS = 300


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= DETAIL_CHARS else line[:DETAIL_CHARS - 3] + "..."


def json_dict(line: bytes) -> dict | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def parse_report(raw: bytes, token: bytes) -> tuple[dict, dict | None]:
    """(isolation, final report) from what the outer runner wrote: the isolation line as soon as the sandbox was
    set up, then, once it is gone, the final report and this run's token (None when either is missing)."""
    import secrets
    lines = raw.split(b"\n")
    isolation = json_dict(lines[0]) or {}
    report = None
    if len(lines) == 3 and secrets.compare_digest(lines[2], token):
        report = json_dict(lines[1])
    return isolation, report


def verdict(isolation: dict, report: dict | None, finished: bool, timeout_s: float, cpu_s: int, stderr: str,
            oom_kills: int = 0, memory_mb: int = 0) -> tuple[bool, str, str]:
    """(passed, status, detail) from the outer runner's report on the program's process; oom_kills: processes the
    sample's cgroup lost to its memory limit."""
    if not finished or (report or {}).get("timeout"):
        return False, "timeout", f"killed after {timeout_s:g} s wall clock"
    if oom_kills:
        return False, "killed", f"memory limit ({memory_mb} MiB, cgroup)"
    if report is None:
        return False, "error", last_line(stderr) or "the sandbox did not report"
    wait_status = report.get("status")
    if report.get("done") and wait_status == 0:
        return True, "passed", ""
    if not isinstance(wait_status, int) or not isolation:  # the sandbox failed before the program ran
        return False, "error", last_line(stderr) or "the sandbox did not start the program"
    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        if sig in (signal.SIGXCPU, signal.SIGKILL):
            return False, "timeout", f"CPU time limit ({cpu_s} s)"
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        why = " (a forbidden system call)" if sig == signal.SIGSYS else ""
        return False, "killed", f"killed by signal {name}{why}"
    code = os.WEXITSTATUS(wait_status)
    if code == 0:
        return False, "exited_early", "exited with code 0 before the tests finished"
    return False, "failed", last_line(stderr) or f"exit code {code}"
