"""Run bookkeeping: seeding, timing, run directories and their lock, JSONL results that survive interruption (one
writer, one reader), strict JSON files, summaries.

torch and numpy are imported where they are used, so that the run-directory and results functions answer at once
(run.py checks and locks a run directory before anything heavy loads; reports read results without torch)."""
from __future__ import annotations

import errno
import fcntl
import hashlib
import itertools
import json
import math
import os
import platform
import random
import socket
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    import torch

LOCK_FILE = "run.lock"


class RunDirError(Exception):
    """A run directory, one of its files, or the disk under it cannot be used as asked; the message names the fix."""


def set_seed(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def item_generator(seed: int, index: int, stream: str = "sample") -> torch.Generator:
    """A random stream per item and purpose, so results depend neither on batch composition nor on whether another
    purpose (say, random KV selection) drew numbers first."""
    import torch

    digest = hashlib.sha256(f"{seed}:{index}:{stream}".encode()).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:7], "little"))


def now(device: torch.device | None = None) -> float:
    """A wall clock that waits for queued GPU work first, so a timed region measures the work itself."""
    if device is not None and device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)
    return time.perf_counter()


def wilson_ci(correct: int, n: int, z: float = 1.96) -> list[float]:
    if n == 0:
        return [0.0, 0.0]
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def run_dir_name(args) -> str:
    model = Path(args.model_name.rstrip("/")).name if os.path.isdir(args.model_name) else args.model_name
    parts = [args.method, args.task, model.replace("/", "_")]
    if getattr(args, "agents", None):
        parts.append(Path(args.agents).stem)
    if args.method == "latent_mas":
        parts.append(f"m{args.latent_steps}")
    if getattr(args, "kv_policy", "none") != "none":
        parts.append(f"{args.kv_policy}-k{args.kv_keep:g}-{args.kv_scope}-{args.kv_positions}")
    else:
        parts.append("nocomp")
    parts.append(datetime.now().strftime("%Y%m%d-%H%M%S"))
    return "_".join(parts)


# --- run directories: created once, held by one process group ----------------------------------------------------

def new_run_dir(parent: Path, name: str) -> Path:
    """A directory that did not exist before: PARENT/NAME, else NAME-2, NAME-3, ... Names carry a one-second
    timestamp, so two runs started together would otherwise share one folder and write every item twice."""
    parent = Path(parent)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for n in itertools.count(1):
            path = parent / (name if n == 1 else f"{name}-{n}")
            try:
                path.mkdir()  # exist_ok=False: the folder that mkdir creates is ours alone
                return path
            except FileExistsError:
                continue
    except OSError as e:
        raise RunDirError(f"cannot create a run directory in {parent} ({why_not(parent, e)}); give --output_dir a "
                          "writable folder") from None
    raise AssertionError("unreachable")


def why_not(path: Path, e: OSError) -> str:
    """The reason a folder cannot be made or used, in words a user can act on."""
    return "it is a file, not a folder" if path.exists() and not path.is_dir() else e.strerror


def lock_run_dir(run_dir: Path) -> IO:
    """Hold RUN_DIR/run.lock (an exclusive flock) for as long as the returned file stays open, normally the life of
    the process; a second run into the same directory gets a RunDirError naming the holder.

    The kernel drops an flock when its process dies, so even kill -9 leaves no stale lock. The file itself stays:
    deleting it would let two processes each lock a different file of the same name."""
    path = Path(run_dir) / LOCK_FILE
    try:
        f = open(path, "a+b", buffering=0)  # unbuffered: nothing left to flush (and fail) at close
    except OSError as e:
        raise RunDirError(f"cannot use {run_dir} as a run directory ({e.strerror}); give a writable folder") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        f.seek(0)
        holder = f.read().decode("utf-8", "replace").strip() or "another process"
        f.close()
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise RunDirError(f"cannot lock {path} ({e.strerror}); put runs on a file system with flock") from None
        raise RunDirError(f"{run_dir} is in use by {holder}; wait for that run to end (or stop it), or write "
                          "to another directory") from None
    note = f"pid {os.getpid()} on {socket.gethostname()}, started {datetime.now():%Y-%m-%d %H:%M:%S}\n"
    try:
        f.truncate(0)
        f.write(note.encode())
    except OSError:
        pass  # a full disk: the lock holds all the same, only the note naming its holder is missing
    return f


def read_config(run_dir: Path) -> dict:
    """RUN_DIR/config.json as run.py wrote it; missing, unreadable or damaged is a RunDirError naming the file."""
    path = Path(run_dir) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{run_dir}: no config.json there; give a run directory this tool wrote") from None
    except OSError as e:
        raise RunDirError(f"cannot read {path} ({e.strerror}); give a run directory this tool wrote") from None
    except ValueError as e:  # bad JSON, or bytes that are not UTF-8
        raise RunDirError(f"{path} is not valid JSON ({e}); it is not a run's config: start a new run") from None
    if not isinstance(config, dict) or not isinstance(config.get("args"), dict):
        raise RunDirError(f"{path} has no 'args' object; it is not a run's config: start a new run")
    return config


# --- strict JSON files ----------------------------------------------------------------------------------------

def _finite(x):
    """x with every NaN and infinity replaced by None: Python's JSON writes them as NaN / Infinity, which is not JSON
    and breaks other readers (jq, JavaScript, pandas' strict mode)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def to_json(obj, indent: int | None = None) -> str:
    """Strict JSON text: never NaN or Infinity (a non-finite number is written as null)."""
    return json.dumps(_finite(obj), indent=indent, ensure_ascii=False, allow_nan=False)


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` in one step, so a reader never sees half a file; a disk error is a RunDirError."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise RunDirError(f"cannot write {path} ({e.strerror})") from None


def write_json(path: Path, obj) -> None:
    write_atomic(path, to_json(obj, indent=2))


# --- results.jsonl: one writer, one reader -------------------------------------------------------------------------

def _record(line: bytes, path: Path, n: int) -> dict:
    try:
        rec = json.loads(line)
    except ValueError as e:  # bad JSON, or bytes that are not UTF-8
        why = f"not JSON: {e}"
    else:
        if isinstance(rec, dict) and isinstance(rec.get("index"), int) and not isinstance(rec["index"], bool):
            return rec
        why = "JSON, but not a record with an integer index"
    raise RunDirError(f"{path}:{n}: damaged line ({why}); nothing was changed: fix or delete that line, then run "
                      "again")


def read_results(path: Path, repair: bool = False) -> list[dict]:
    """The records of a results JSONL file (results.jsonl or a part file): the one reader for resume, merge and
    reports.

    Blank lines are skipped. A last line without its newline is a write cut short: kept if it is a whole record,
    dropped if not (torn). With repair (only for the process that holds the file), the whole one gets its newline,
    so the next record does not glue onto it, and the torn one is cut. Any other damaged line stops with a
    RunDirError naming file and line, and nothing is changed: only a torn tail is ever removed."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise RunDirError(f"cannot read {path} ({e.strerror})") from None
    lines = data.split(b"\n")
    tail = lines.pop()  # what follows the last newline: b"" when the file ends whole
    records = [_record(line, path, n) for n, line in enumerate(lines, 1) if line.strip()]
    if not tail.strip():
        return records
    try:
        json.loads(tail)
    except ValueError:  # torn: cut it
        if repair:
            _repair(path, cut_at=len(data) - len(tail))
        return records
    records.append(_record(tail, path, len(lines) + 1))
    if repair:
        _repair(path, cut_at=None)
    return records


def _repair(path: Path, cut_at: int | None) -> None:
    """Cut a torn tail at byte `cut_at`, or (None) give a whole last line its missing newline."""
    try:
        with open(path, "r+b") as f:
            if cut_at is None:
                f.seek(0, os.SEEK_END)
                f.write(b"\n")
            else:
                f.truncate(cut_at)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise RunDirError(f"cannot repair the last line of {path} ({e.strerror})") from None


class ResultsWriter:
    """Appends one JSON line per finished item and puts it on disk at once (an interrupted run loses nothing).

    The file is flocked for as long as the writer is open, so no two processes ever append to one results or part
    file. Writes go straight to the file descriptor: a disk error is raised once, as a RunDirError, and leaves at
    most a torn last line, which the next resume cuts."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunDirError(f"cannot write {self.path} ({e.strerror})") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            raise RunDirError(f"{self.path} is being written by another process; wait for it to end") from None

    def write(self, record: dict) -> None:
        data = (to_json(record) + "\n").encode("utf-8")
        try:
            while data:
                data = data[os.write(self.fd, data):]
            os.fsync(self.fd)
        except OSError as e:
            raise RunDirError(f"cannot write {self.path} ({e.strerror})") from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def environment() -> dict:
    import torch
    import transformers

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "platform": platform.platform(),
            "cuda": torch.version.cuda if torch.cuda.is_available() else None}
    try:
        here = Path(__file__).resolve().parent
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                            timeout=5).stdout.strip() or None
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=5)
        info["git_dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


def _mean(values: list[float]) -> float:
    import numpy as np

    return round(float(np.mean(values)), 4) if values else 0.0


def summarize(records: list[dict], args, data_info: dict, expected_n: int) -> dict:
    records = sorted(records, key=lambda r: r["index"])
    n = len(records)
    correct = sum(bool(r["correct"]) for r in records)
    judger = [r["agents"][-1] for r in records if r["agents"]]
    total = sum(r["time_s"] for r in records)
    return {
        "method": args.method, "task": args.task, "model": args.model_name,
        "prompt": args.prompt if args.method != "baseline" else None,
        "n": n, "n_expected": expected_n, "complete": n == expected_n,
        "correct": correct, "accuracy": round(correct / n, 4) if n else 0.0, "accuracy_ci95": wilson_ci(correct, n),
        "latent_steps": args.latent_steps if args.method == "latent_mas" else None,
        "compression": compression_settings(args), "seed": args.seed,
        "temperature": args.temperature, "max_new_tokens": args.max_new_tokens,
        "data_source": data_info.get("source"), "n_options": data_info.get("n_options"),
        "data_note": data_info.get("note"),
        "time_total_s": round(total, 3), "time_per_sample_s": round(total / n, 4) if n else 0.0,
        "generated_tokens_mean": _mean([r["generated_tokens"] for r in records]),
        "kv_tokens_judger_mean": _mean([a["kv_tokens_in"] for a in judger]),
        "kv_bytes_judger_mean": _mean([a["kv_bytes_in"] for a in judger]),
        **_compression_means(records, judger),
    }


def compression_settings(args) -> dict | None:
    if getattr(args, "kv_policy", "none") == "none":
        return None
    keys = ("kv_policy", "kv_keep", "kv_scope", "kv_min_keep", "kv_query", "kv_protect", "kv_positions",
            "compress_at", "include_old_prompts")
    return {k: getattr(args, k) for k in keys}


def _compression_means(records: list[dict], judger: list[dict]) -> dict:
    out = {}
    if records and "kv_kept_share" in records[0]:
        out["kv_kept_share_judger_mean"] = _mean([r["kv_kept_share"] for r in records])
        out["kv_tokens_full_judger_mean"] = _mean([a["kv_tokens_full"] for a in judger])
        out["compress_time_mean_s"] = _mean([sum(a.get("compress_time_s", 0) for a in r["agents"])
                                             for r in records])
    fid = [r["fidelity"] for r in records if "fidelity" in r]
    if fid:
        out["fidelity_agreement_mean"] = _mean([f["agreement"] for f in fid])
        out["fidelity_kl_mean"] = _mean([f["kl"] for f in fid])
        out["fidelity_output_match_rate"] = _mean([float(f["output_match"]) for f in fid])
    return out
