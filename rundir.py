"""The run directory and its files: where a run writes, the one writer and the one reader of its records, the part
files of a data-parallel launch, collecting and merging them, config.json and summary.json.

    RUN_DIR/config.json                 settings (config.RunConfig, flat under "args"), data, team, device, versions
    RUN_DIR/results.jsonl               one record per item, appended and flushed as each item finishes
    RUN_DIR/parts/part-R.jsonl, .done   rank R of a data-parallel launch, until rank 0 merges them into results.jsonl
    RUN_DIR/summary.json                what the records add up to (`summarize`)
    RUN_DIR/run.lock                    flocked by the run that owns the directory

A run directory belongs to one run at a time: a new one never reuses a name, and the main process holds its lock
for the whole run (the kernel drops it when the process dies). Every process also flocks the file it appends to, so
no two processes ever write one results or part file. Resume works per part: the items done are those in
results.jsonl and in every part file, whoever wrote them. Nothing here imports torch: run.py checks and locks a
directory before anything heavy loads, and reports read runs without it.
"""
from __future__ import annotations

import errno
import fcntl
import itertools
import json
import math
import os
import re
import socket
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO

import strictfiles
from config import ConfigError, RunConfig
from errors import RunError
from strictfiles import clip, shown
from utils import wilson_ci

CONFIG, RESULTS, SUMMARY, PARTS, LOCK_FILE = "config.json", "results.jsonl", "summary.json", "parts", "run.lock"


class RunDirError(RunError):
    """A run directory, one of its files, or the disk under it cannot be used as asked; the message names the fix."""


# --- strict JSON files -------------------------------------------------------------------------------------------

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


def _read_json(path: Path, what: str) -> dict:
    try:
        data = strictfiles.parse(path.read_text(encoding="utf-8"), "json")  # NaN, Infinity, a key twice: refused
    except FileNotFoundError:
        raise RunDirError(f"{path.parent}: no {path.name} there; give a run directory this tool wrote") from None
    except OSError as e:
        raise RunDirError(f"cannot read {path} ({e.strerror}); give a run directory this tool wrote") from None
    except strictfiles.DocumentError as e:
        said = f"{path} is {e}" if str(e).startswith("not valid") else f"{path}: {e}"
        raise RunDirError(f"{said}; it is not a run's {what} as this tool writes it: start a new run") from None
    except ValueError as e:  # bytes that are not UTF-8
        raise RunDirError(f"{path} is not valid JSON ({clip(e)}); it is not a run's {what}: start a new run") \
            from None
    if not isinstance(data, dict):
        raise RunDirError(f"{path} is not a JSON object; it is not a run's {what}: start a new run")
    return data


def read_config(run_dir: Path) -> dict:
    """RUN_DIR/config.json as run.py wrote it; missing, unreadable or damaged is a RunDirError naming the file."""
    config = _read_json(Path(run_dir) / CONFIG, "config")
    if not isinstance(config.get("args"), dict):
        raise RunDirError(f"{Path(run_dir) / CONFIG} has no 'args' object; it is not a run's config: start a new run")
    return config


def load_config(run_dir: Path) -> tuple[dict, RunConfig]:
    """config.json and the run's settings in it, also from a run written before a setting existed."""
    config = read_config(run_dir)
    return config, RunConfig.from_saved(config["args"])


# --- results.jsonl and part files: one writer, one reader ----------------------------------------------------------

def _record(line: bytes, path: Path, n: int) -> dict:
    try:
        rec = strictfiles.parse(line, "json")  # NaN, Infinity, a key twice: refused (this tool never writes them)
    except ValueError as e:  # bad JSON, or bytes that are not UTF-8
        why = "not JSON: " + clip(str(e).removeprefix("not valid JSON (").removesuffix(")"))
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


def result_files(run_dir: Path) -> list[Path]:
    """results.jsonl first, then the part files in rank order."""
    run_dir = Path(run_dir)
    files = [run_dir / RESULTS] if (run_dir / RESULTS).exists() else []
    part_no = lambda p: int(re.sub(r"\D", "", p.stem) or 0)  # noqa: E731
    return files + sorted((run_dir / PARTS).glob("part-*.jsonl"), key=part_no)


def collect(run_dir: Path, repair: Path | None = None) -> dict[int, dict]:
    """Every record in a run directory, one per item (the first seen wins: results.jsonl, then parts by rank). Only
    the file `repair` (the caller's own, under its lock) is repaired; the others are read as they stand."""
    records: dict[int, dict] = {}
    for path in result_files(run_dir):
        for rec in read_results(path, repair=path == repair):
            records.setdefault(rec["index"], rec)
    return records


def write_results(path: Path, records: dict[int, dict]) -> None:
    """results.jsonl in item order, replaced in one step."""
    write_atomic(path, "".join(to_json(records[i]) + "\n" for i in sorted(records)))


def merge_parts(run_dir: Path) -> dict[int, dict]:
    """Fold the part files into results.jsonl (item order) and remove them; returns the records."""
    records = collect(run_dir)
    write_results(run_dir / RESULTS, records)
    parts = run_dir / PARTS
    for f in list(parts.glob("part-*")):
        f.unlink()
    try:
        parts.rmdir()
    except OSError:
        pass  # something else lives there; leave it
    return records


# --- a run as it lies on disk ----------------------------------------------------------------------------------------

@dataclass
class SavedRun:
    path: Path
    config: dict  # config.json as written ({} when the directory has none)
    settings: RunConfig | None
    records: list[dict] = field(default_factory=list)
    summary: dict | None = None  # summary.json, or rebuilt from config and records when the run stopped before it


def is_run(path: Path) -> bool:
    return (path / SUMMARY).exists() or (path / RESULTS).exists() or (path / PARTS).is_dir()


# what summary.json holds, by type (any key may also be null): a report formats these, so a wrong type is refused
# when the run is read, in one line naming file and key, instead of failing later inside a table or a plot
_NUMBER = (int, float)
SUMMARY_TYPES: dict[str, tuple] = {
    **dict.fromkeys(("method", "task", "model", "prompt", "data_source", "data_note"), (str,)),
    **dict.fromkeys(("n", "n_expected", "correct", "latent_steps", "seed", "max_new_tokens", "n_options"), (int,)),
    **dict.fromkeys(("accuracy", "temperature", "time_total_s", "time_per_sample_s", "generated_tokens_mean",
                     "kv_tokens_judger_mean", "kv_bytes_judger_mean", "kv_kept_share_judger_mean",
                     "kv_tokens_full_judger_mean", "compress_time_mean_s", "fidelity_agreement_mean",
                     "fidelity_kl_mean", "fidelity_output_match_rate"), _NUMBER),
    "complete": (bool,), "compression": (dict,), "accuracy_ci95": (list,),
}
RECORD_TYPES: dict[str, tuple] = {"correct": (bool,), "time_s": _NUMBER, "generated_tokens": _NUMBER,
                                  "agents": (list,)}


_WANT = {(str,): "text", (int,): "an integer", _NUMBER: "a number", (bool,): "true or false",
         (dict,): "an object with kv_policy and kv_keep", (list,): "[low, high] of numbers"}


def _typed(value, types: tuple) -> bool:
    if isinstance(value, bool):  # a bool is an int to Python, never a count or a number here
        return bool in types
    return isinstance(value, types)


def check_summary(summary: dict, path: Path) -> dict:
    """summary.json's values against SUMMARY_TYPES (keys it lacks, or does not know, are left alone)."""
    for key, types in SUMMARY_TYPES.items():
        value = summary.get(key)
        ok = value is None or _typed(value, types)
        if ok and key == "accuracy_ci95" and value is not None:
            ok = len(value) == 2 and all(v is None or _typed(v, _NUMBER) for v in value)
        if ok and key == "compression" and value is not None:
            ok = _typed(value.get("kv_policy"), (str,)) and _typed(value.get("kv_keep"), _NUMBER)
        if not ok:
            raise RunDirError(f"{path}: {key} is {shown(value)}, not {_WANT[types]}; not a summary this tool "
                              "wrote: fix it, or delete it (a report rebuilds it from config.json and the records)")
    return summary


def check_record(rec: dict, path: Path) -> dict:
    """A record's fields that summaries and reports add up, against RECORD_TYPES."""
    for key, types in RECORD_TYPES.items():
        if key in rec and not _typed(rec[key], types):
            raise RunDirError(f"{path}: the record of item {rec['index']} has {key} {shown(rec[key])}; it is not a "
                              "record this tool wrote: fix or delete that line")
    return rec


def read_run(path: Path) -> SavedRun:
    """A run directory for reports: its config, settings, records (results.jsonl, then parts not merged yet; read
    only) and summary. Any damaged file is a RunDirError naming it."""
    path = Path(path)
    config = _read_json(path / CONFIG, "config") if (path / CONFIG).exists() else {}
    settings = RunConfig.from_saved(config["args"]) if isinstance(config.get("args"), dict) else None
    records = list(collect(path).values())
    for rec in records:
        check_record(rec, path / RESULTS)
    if (path / SUMMARY).exists():
        summary = check_summary(_read_json(path / SUMMARY, "summary"), path / SUMMARY)
    elif settings is not None and records:  # killed before it wrote a summary: rebuild it the way run.py does
        data = config.get("data", {})
        summary = summarize(records, settings, data, data.get("n_items", len(records)))
    else:
        summary = None
    return SavedRun(path, config, settings, records, summary)


# --- creating and holding a run directory --------------------------------------------------------------------------

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
    # os.path's tests answer False where Path.exists raises (a name too long, a folder without permission)
    return "it is a file, not a folder" if os.path.exists(path) and not os.path.isdir(path) else e.strerror


def _holder_note(f: IO, wait_s: float = 2.0) -> str:
    """The holder's note; a holder that has just taken the lock writes it a moment later, so wait a little."""
    deadline = time.monotonic() + wait_s
    while True:
        f.seek(0)
        note = f.read().decode("utf-8", "replace").strip()
        if note or time.monotonic() > deadline:
            return note or "another process"
        time.sleep(0.05)


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
        holder = _holder_note(f)
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


def describe_diff(diff: dict[str, tuple], a: str, b: str) -> str:
    return "; ".join(f"{k}: {a} {va!r}, {b} {vb!r}" for k, (va, vb) in diff.items())


class RunDir:
    """This process's run directory for one launch (parallel.Launch: rank, world, shard): claimed, locked and
    agreed on at the start, then the files this process reads and writes, and the finish."""

    def __init__(self, path: Path, launch, resumed: bool, nonce: str, created: bool = False, lock: IO | None = None):
        self.path, self.launch, self.resumed, self.nonce = Path(path), launch, resumed, nonce
        self.created = created  # the main process made the directory (so it may remove it if nothing was written)
        self.lock = lock  # the main process's open run.lock: the directory is this launch's while it is open

    @classmethod
    def open(cls, cfg: RunConfig, launch, resume: str | None = None) -> RunDir:
        """The run directory of this launch, created if new and locked by the main process before any process
        writes: --resume, --run_dir, or a new folder under --output_dir. Every process gets the main process's
        answer, a refusal included (a RunDirError naming the fix)."""
        chosen = error = lock = None
        created = resumed = False
        if launch.is_main:
            try:
                chosen, created, resumed, lock = _claim(cfg, launch, resume)
                chosen = str(chosen)
            except (RunDirError, ConfigError) as e:
                error = str(e)
        nonce = f"{time.time_ns()}-{os.getpid()}"  # one per launch: marks which "done" markers belong to it
        if launch.world > 1:
            chosen, nonce, error, resumed = launch.agree([chosen, nonce, error, resumed])
        if error:
            raise RunDirError(error)
        return cls(Path(chosen), launch, resumed, nonce, created, lock)

    def release(self) -> None:
        """Give the run directory up. The kernel does it when the process ends; a caller that lives on (a test, a
        notebook) needs it now."""
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    def discard(self) -> None:
        """Release the run directory and remove it if this launch created it and wrote nothing into it (a model
        that does not load, say), so failed starts leave no empty folders. Anything else there is left alone."""
        self.release()
        if not (self.launch.is_main and self.created):
            return
        try:
            if (self.path / PARTS).is_dir():
                (self.path / PARTS).rmdir()
            (self.path / LOCK_FILE).unlink(missing_ok=True)
            self.path.rmdir()
        except OSError:
            pass  # not empty: something was written after all, so it stays

    def write_config(self, config: dict) -> None:
        write_json(self.path / CONFIG, config)

    @property
    def own_path(self) -> Path:
        """Where this process appends its records."""
        if self.launch.world == 1:
            return self.path / RESULTS
        return self.path / PARTS / f"part-{self.launch.rank}.jsonl"

    def done(self) -> dict[int, dict]:
        """Every record already in the run directory (results.jsonl and all parts); only this process's own file is
        repaired (read_results), under its lock."""
        return collect(self.path, repair=self.own_path)

    def writer(self) -> ResultsWriter:
        return ResultsWriter(self.own_path)

    def finish(self, done: dict[int, dict], interrupted: bool) -> tuple[dict[int, dict], bool]:
        """After this process's loop: a worker leaves its marker and is done; the main process waits for every
        worker, merges all records into results.jsonl in item order and returns them (with whether any process was
        interrupted). An interrupted main process does not wait and leaves the parts for --resume."""
        parts, launch = self.path / PARTS, self.launch
        if launch.world > 1:
            marker = {"nonce": self.nonce, "rank": launch.rank, "interrupted": interrupted}
            write_atomic(parts / f"part-{launch.rank}.done", json.dumps(marker))
            if not launch.is_main:
                return done, interrupted
            if not interrupted:
                try:
                    interrupted = self._wait_for_workers(parts)
                except KeyboardInterrupt:
                    print("[run] interrupted while waiting for the other processes", file=sys.stderr)
                    return collect(self.path), True
        elif not parts.exists():
            return done, interrupted
        if launch.world > 1 and interrupted and not self._all_markers(parts):
            return collect(self.path), True
        return merge_parts(self.path), interrupted

    def write_summary(self, summary: dict) -> None:
        write_json(self.path / SUMMARY, summary)

    def _all_markers(self, parts: Path) -> list[dict] | None:
        markers = []
        for r in range(self.launch.world):
            try:
                m = json.loads((parts / f"part-{r}.done").read_text())
            except (OSError, ValueError):
                return None
            if m.get("nonce") != self.nonce:
                return None
            markers.append(m)
        return markers

    def _wait_for_workers(self, parts: Path, poll_s: float = 1.0) -> bool:
        told = False
        while (markers := self._all_markers(parts)) is None:
            if not told:
                print(f"[run] rank 0 finished its share; waiting for the other {self.launch.world - 1} processes",
                      file=sys.stderr)
                told = True
            time.sleep(poll_s)
        return any(m["interrupted"] for m in markers)


def _claim(cfg: RunConfig, launch, resume: str | None) -> tuple[Path, bool, bool, IO]:
    """Main process: create (or find) the run directory and lock it; only then decide whether a --run_dir that holds
    a run is this one continued (under the lock, so no other run can start there in between)."""
    run_dir = cfg.output.run_dir
    if resume or run_dir:
        chosen = Path(resume or run_dir)
        created = not os.path.exists(chosen)
        try:
            chosen.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(f"cannot create the run directory {chosen} ({why_not(chosen, e)}); give a writable "
                              "folder") from None
    else:
        chosen, created = new_run_dir(Path(cfg.output.output_dir), cfg.run_name()), True
    lock = lock_run_dir(chosen)
    resumed = bool(resume)
    try:
        if run_dir and not resume and (chosen / CONFIG).exists():  # continue it if it is this same run
            diff = load_config(chosen)[1].differences(cfg)
            if diff:
                raise RunDirError(f"--run_dir {run_dir} holds another run ({describe_diff(diff, 'saved', 'given')}); "
                                  "choose a new --run_dir, or continue that run with --resume")
            resumed = True
        if launch.world > 1:
            (chosen / PARTS).mkdir(exist_ok=True)
    except BaseException:
        lock.close()
        raise
    return chosen, created, resumed, lock


# --- summary.json ----------------------------------------------------------------------------------------------------

def _mean(values: list[float]) -> float:
    import numpy as np

    return round(float(np.mean(values)), 4) if values else 0.0


def summarize(records: list[dict], settings: RunConfig, data_info: dict, expected_n: int) -> dict:
    """summary.json: the run's settings (RunConfig.summary_settings), counts, accuracy with its Wilson interval,
    time, tokens and KV means."""
    s = settings.summary_settings()
    records = sorted(records, key=lambda r: r["index"])
    n = len(records)
    correct = sum(bool(r["correct"]) for r in records)
    judger = [r["agents"][-1] for r in records if r["agents"]]
    total = sum(r["time_s"] for r in records)
    return {
        "method": s["method"], "task": s["task"], "model": s["model"], "prompt": s["prompt"],
        "n": n, "n_expected": expected_n, "complete": n == expected_n,
        "correct": correct, "accuracy": round(correct / n, 4) if n else 0.0, "accuracy_ci95": wilson_ci(correct, n),
        **{k: s[k] for k in ("latent_steps", "compression", "seed", "temperature", "max_new_tokens")},
        "data_source": data_info.get("source"), "n_options": data_info.get("n_options"),
        "data_note": data_info.get("note"),
        "time_total_s": round(total, 3), "time_per_sample_s": round(total / n, 4) if n else 0.0,
        "generated_tokens_mean": _mean([r["generated_tokens"] for r in records]),
        "kv_tokens_judger_mean": _mean([a["kv_tokens_in"] for a in judger]),
        "kv_bytes_judger_mean": _mean([a["kv_bytes_in"] for a in judger]),
        **_compression_means(records, judger),
        "models": per_model(records),
    }


def per_model(records: list[dict]) -> dict:
    """summary.json's "models": per model the records name (each agent's `model`), its agents and, meaned over
    items, the time its agents took (`time_s`, per item as in the records) and the most KV one of them held
    (kv_bytes_out: in latent_mas a model's agents share its cache, so this is that cache at its largest; in text_mas
    the largest single agent's)."""
    rows: dict[str, dict] = {}
    for r in records:
        seen: dict[str, list[dict]] = {}
        for a in r["agents"]:
            if a.get("model"):
                seen.setdefault(a["model"], []).append(a)
        for m, agents in seen.items():
            row = rows.setdefault(m, {"agents": [a["name"] for a in agents], "time": [], "bytes": [], "tokens": []})
            row["time"].append(sum(a["time_s"] for a in agents))
            row["bytes"].append(max(a["kv_bytes_out"] for a in agents))
            row["tokens"].append(max(a["kv_tokens_out"] for a in agents))
    return {m: {"agents": row["agents"], "time_s": _mean(row["time"]), "kv_bytes_max_mean": _mean(row["bytes"]),
                "kv_tokens_max_mean": _mean(row["tokens"])} for m, row in rows.items()}


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
