"""Scale-out: data-parallel processes, shards for job arrays, and merging runs.

Data parallel: `torchrun --nproc_per_node N run.py ...` or `accelerate launch --num_processes N run.py ...` start N
copies of the run. Each reads its rank from the launcher's environment (RANK, WORLD_SIZE, LOCAL_RANK), takes every
N-th item of the task (interleaved, so long and short items spread evenly), and appends its records to its own
part file, `RUN_DIR/parts/part-<rank>.jsonl`, flushed per item. When a process is done it leaves a marker beside
its part; the main process (rank 0) waits for every marker, merges everything in the run directory into one
`results.jsonl` in item order, removes the parts and writes the one `summary.json`. The processes talk to each
other once, at the start, to agree on the run directory (a gloo broadcast: no GPU collective, no timeout while the
ranks work at different speeds); after that the file system is the only channel, so the run directory must be on a
file system every process sees.

One launch at a time: the main process creates the run directory (a new one never reuses a name) and holds its
lock (utils.lock_run_dir) for the whole run, before it tells the others where to write; a launch whose main process
cannot take the lock ends in every process with one line naming the holder. Each process also flocks the file it
appends to, so no two processes ever write one results or part file.

Resume works per part: the items already done are those in `results.jsonl` and in every part file, whoever wrote
them, so a run can be resumed with the same, another or no launcher.

Shards: `--num_shards K --shard_id I` restricts a run to items I, I+K, I+2K, ... (one job of a scheduler's array);
`python run.py merge RUN_DIR...` checks that the runs are the shards of one configuration and writes the combined
run. Shards and processes compose: a shard can itself run on N processes.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO

from utils import (
    LOCK_FILE,
    RunDirError,
    lock_run_dir,
    new_run_dir,
    read_config,
    read_results,
    summarize,
    to_json,
    why_not,
    write_atomic,
    write_json,
)

PARTS = "parts"
SHARD_FIELDS = ("num_shards", "shard_id")
# the one list of flags that never change a run's records: they may change on --resume, between a run and its
# --run_dir, and between shards; every other flag must match the saved run
RUNTIME_FLAGS = ("device", "device_map", "max_memory", "attn_implementation", "generate_bs", "eval_workers",
                 "verbose", "output_dir", "run_dir", "resume")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


class ScaleOutError(Exception):
    """A launch, shard or merge that cannot work as asked; the message names the fix."""


# --- this process's place in the launch -----------------------------------------------------------------------------

@dataclass
class Launch:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    num_shards: int = 1
    shard_id: int = 0
    nonce: str = ""  # one value per launch, agreed at the start; marks which "done" markers belong to it
    created: bool = False  # the main process made the run directory (so it may remove it if nothing was written)
    lock: IO | None = None  # the open run.lock of the main process: the directory is this launch's while it is open

    @classmethod
    def from_args(cls, args, env=None) -> Launch:
        """The launcher's ranks (torchrun and accelerate launch both set RANK / WORLD_SIZE / LOCAL_RANK) and the
        shard flags, checked against the device flags."""
        env = os.environ if env is None else env
        try:
            world, rank = int(env.get("WORLD_SIZE", "1")), int(env.get("RANK", "0"))
            local_rank = int(env.get("LOCAL_RANK", str(rank)))
        except ValueError as e:
            raise ScaleOutError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers ({e})") from None
        launch = cls(rank, world, local_rank, getattr(args, "num_shards", 1), getattr(args, "shard_id", 0))
        if not 0 <= launch.shard_id < launch.num_shards:
            raise ScaleOutError(f"--shard_id {launch.shard_id} is outside 0..{launch.num_shards - 1} "
                                f"(--num_shards {launch.num_shards})")
        device_map = getattr(args, "device_map", None)
        if device_map:
            if world > 1:
                raise ScaleOutError("--device_map spreads one model over all visible GPUs, so it cannot share them "
                                    "with other processes of a data-parallel launch: run one process per GPU group "
                                    "(CUDA_VISIBLE_DEVICES) with --num_shards / --shard_id instead")
            if args.device != "auto":
                raise ScaleOutError(f"--device_map places the model itself; drop --device {args.device}")
            if device_map not in DEVICE_MAPS and not Path(device_map).is_file():
                raise ScaleOutError(f"--device_map {device_map!r} is neither one of {', '.join(DEVICE_MAPS)} nor a "
                                    "JSON file mapping module names to devices")
        if getattr(args, "max_memory", None):
            if not device_map:
                raise ScaleOutError("--max_memory limits what --device_map puts on each device; give --device_map")
            parse_max_memory(args.max_memory)
        if world > 1 and re.fullmatch(r"cuda:\d+", args.device):
            raise ScaleOutError(f"--device {args.device} would put all {world} processes on one GPU; use --device "
                                "auto (or cuda): each process takes the GPU of its LOCAL_RANK")
        return launch

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def tag(self) -> str:
        """' rank r/N' in a data-parallel launch, '' otherwise (for log lines)."""
        return f" rank {self.rank}/{self.world}" if self.world > 1 else ""

    def device(self, device: str) -> str:
        """This process's device: in a data-parallel launch 'auto' and 'cuda' mean the GPU of LOCAL_RANK."""
        if self.world == 1 or device not in ("auto", "cuda"):
            return device
        import torch

        if not torch.cuda.is_available():
            if device == "cuda":
                return device  # models.resolve_device names the problem
            return "cpu"
        if self.local_rank >= torch.cuda.device_count():
            raise ScaleOutError(f"LOCAL_RANK {self.local_rank} but only {torch.cuda.device_count()} GPUs are "
                                "visible: start at most one process per GPU")
        return f"cuda:{self.local_rank}"

    # --- items ---------------------------------------------------------------------------------------------------
    def shard(self, items: list) -> list:
        """This shard's items: every num_shards-th, from shard_id."""
        return items[self.shard_id::self.num_shards]

    def mine(self, items: list) -> list:
        """This process's share of the shard's items: every world-th, from rank."""
        return items[self.rank::self.world]

    def describe(self, n_total: int, shard_items: list) -> dict:
        """What config.json records about the split (merge checks coverage against it)."""
        return {"processes": self.world, "num_shards": self.num_shards, "shard_id": self.shard_id,
                "items_total": n_total, "items": [it.index for it in shard_items]}

    # --- the run directory ---------------------------------------------------------------------------------------
    def open_run_dir(self, args, default_name) -> Path:
        """The run directory of this launch, created if new and locked by the main process before any process
        writes: --resume, --run_dir, or a new folder under --output_dir (a shard's name says which shard it is).
        Every process gets the main process's answer, a refusal included (a ScaleOutError naming the fix)."""
        chosen, error = None, None
        if self.is_main:
            try:
                chosen = str(self._claim(args, default_name))
            except (RunDirError, ScaleOutError) as e:
                error = str(e)
        nonce = f"{time.time_ns()}-{os.getpid()}"
        if self.world > 1:
            chosen, nonce, error = _broadcast_from_main([chosen, nonce, error])
        if error:
            raise ScaleOutError(error)
        self.nonce = nonce
        return Path(chosen)

    def _claim(self, args, default_name) -> Path:
        """Main process: create (or find) the run directory, lock it, and only then decide whether a --run_dir that
        holds a run is this one continued: under the lock, so no other run can start there in between."""
        if args.resume or getattr(args, "run_dir", None):
            chosen = Path(args.resume or args.run_dir)
            self.created = not chosen.exists()
            try:
                chosen.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise RunDirError(f"cannot create the run directory {chosen} ({why_not(chosen, e)}); give a "
                                  "writable folder") from None
        else:
            name = default_name(args)
            if self.num_shards > 1:
                head, _, stamp = name.rpartition("_")
                name = f"{head}_shard{self.shard_id}of{self.num_shards}_{stamp}"
            chosen, self.created = new_run_dir(Path(args.output_dir), name), True
        self.lock = lock_run_dir(chosen)
        if getattr(args, "run_dir", None) and not args.resume:
            adopt_run_dir(args)
        if self.world > 1:
            (chosen / PARTS).mkdir(exist_ok=True)
        return chosen

    def release(self) -> None:
        """Give the run directory up. The kernel does it when the process ends; a caller that lives on (a test, a
        notebook) needs it now."""
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    def discard(self, run_dir: Path) -> None:
        """Release the run directory and remove it if this launch created it and wrote nothing into it (a model
        that does not load, say), so failed starts leave no empty folders. Anything else there is left alone."""
        self.release()
        if not (self.is_main and self.created):
            return
        try:
            if (run_dir / PARTS).is_dir():
                (run_dir / PARTS).rmdir()
            (run_dir / LOCK_FILE).unlink(missing_ok=True)
            run_dir.rmdir()
        except OSError:
            pass  # not empty: something was written after all, so it stays

    def own_path(self, run_dir: Path) -> Path:
        """Where this process appends its records."""
        if self.world == 1:
            return run_dir / "results.jsonl"
        return run_dir / PARTS / f"part-{self.rank}.jsonl"

    def done(self, run_dir: Path) -> dict[int, dict]:
        """Every record already in the run directory (results.jsonl and all parts). Only this process's own file is
        repaired (utils.read_results), under its lock; the others are read as they are."""
        own = self.own_path(run_dir)
        records = {}
        for path in result_files(run_dir):
            for rec in read_results(path, repair=path == own):
                records.setdefault(rec["index"], rec)
        return records

    def finish(self, run_dir: Path, done: dict[int, dict], interrupted: bool) -> tuple[dict[int, dict], bool]:
        """After this process's loop: a worker leaves its marker and is done; the main process waits for every
        worker, merges all records into results.jsonl in item order and returns them (with whether any process was
        interrupted). An interrupted main process does not wait and leaves the parts for --resume."""
        parts = run_dir / PARTS
        if self.world > 1:
            marker = {"nonce": self.nonce, "rank": self.rank, "interrupted": interrupted}
            write_atomic(parts / f"part-{self.rank}.done", json.dumps(marker))
            if not self.is_main:
                return done, interrupted
            if not interrupted:
                try:
                    interrupted = self._wait_for_workers(parts)
                except KeyboardInterrupt:
                    interrupted = True
                    print("[run] interrupted while waiting for the other processes", file=sys.stderr)
                    return collect(run_dir), True
        elif not parts.exists():
            return done, interrupted
        if self.world > 1 and interrupted and not self._all_markers(parts):
            return collect(run_dir), True
        return merge_parts(run_dir), interrupted

    def _all_markers(self, parts: Path) -> list[dict] | None:
        markers = []
        for r in range(self.world):
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
                print(f"[run] rank 0 finished its share; waiting for the other {self.world - 1} processes",
                      file=sys.stderr)
                told = True
            time.sleep(poll_s)
        return any(m["interrupted"] for m in markers)


def _broadcast_from_main(values: list):
    """Rank 0's `values` in every process: one gloo broadcast over the launcher's rendezvous (MASTER_ADDR/PORT)."""
    import torch.distributed as dist

    own_group = not dist.is_initialized()
    if own_group:
        dist.init_process_group(backend="gloo", timeout=timedelta(minutes=30))
    try:
        box = list(values) if dist.get_rank() == 0 else [None] * len(values)
        dist.broadcast_object_list(box, src=0)
    finally:
        if own_group:
            dist.destroy_process_group()
    return box


# --- reading and merging result files -------------------------------------------------------------------------------

def result_files(run_dir: Path) -> list[Path]:
    """results.jsonl first, then the part files in rank order."""
    files = [run_dir / "results.jsonl"] if (run_dir / "results.jsonl").exists() else []
    part_no = lambda p: int(re.sub(r"\D", "", p.stem) or 0)  # noqa: E731
    return files + sorted((run_dir / PARTS).glob("part-*.jsonl"), key=part_no)


def collect(run_dir: Path) -> dict[int, dict]:
    """Every record in a run directory, one per item (the first seen wins: results.jsonl, then parts by rank). Read
    only: a file another process is appending to is read as it stands."""
    records: dict[int, dict] = {}
    for path in result_files(run_dir):
        for rec in read_results(path):
            records.setdefault(rec["index"], rec)
    return records


def write_results(path: Path, records: dict[int, dict]) -> None:
    """results.jsonl in item order, replaced in one step."""
    write_atomic(path, "".join(to_json(records[i]) + "\n" for i in sorted(records)))


def merge_parts(run_dir: Path) -> dict[int, dict]:
    """Fold the part files into results.jsonl (item order) and remove them; returns the records."""
    records = collect(run_dir)
    write_results(run_dir / "results.jsonl", records)
    parts = run_dir / PARTS
    for f in list(parts.glob("part-*")):
        f.unlink()
    try:
        parts.rmdir()
    except OSError:
        pass  # something else lives there; leave it
    return records


# --- settings ---------------------------------------------------------------------------------------------------------

def parse_max_memory(text: str) -> dict:
    """'0=70GiB,1=70GiB,cpu=200GiB' -> {0: '70GiB', 1: '70GiB', 'cpu': '200GiB'} (accelerate's max_memory)."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not value or not (key.isdigit() or key in ("cpu", "disk")):
            raise ScaleOutError(f"--max_memory {text!r}: give DEVICE=SIZE pairs such as 0=70GiB,1=70GiB,cpu=200GiB")
        out[int(key) if key.isdigit() else key] = value
    return out


def device_map_arg(value: str):
    """--device_map as from_pretrained takes it: a strategy name, or the {module: device} map of a JSON file."""
    if value in DEVICE_MAPS:
        return value
    return json.loads(Path(value).read_text())


def differences(a: dict, b: dict, ignore) -> dict[str, tuple]:
    """Keys whose values differ between two saved argument sets, ignoring `ignore`."""
    keys = (set(a) | set(b)) - set(ignore)
    return {k: (a.get(k), b.get(k)) for k in sorted(keys) if a.get(k) != b.get(k)}


def adopt_run_dir(args) -> None:
    """--run_dir DIR that already holds a run: continue it (say, a requeued job) when its settings are these, else
    refuse. Sets args.resume; leaves a new or empty DIR alone."""
    if not (Path(args.run_dir) / "config.json").exists():
        return
    saved = read_config(args.run_dir)["args"]
    given = {k: v for k, v in vars(args).items() if k in saved}
    diff = differences(saved, given, RUNTIME_FLAGS)
    if diff:
        raise ScaleOutError(f"--run_dir {args.run_dir} holds another run ({describe_diff(diff, 'saved', 'given')}); "
                            "choose a new --run_dir, or continue that run with --resume")
    args.resume = args.run_dir


def describe_diff(diff: dict[str, tuple], a: str, b: str) -> str:
    return "; ".join(f"{k}: {a} {va!r}, {b} {vb!r}" for k, (va, vb) in diff.items())


# --- python run.py merge RUN_DIR... -----------------------------------------------------------------------------------

def _ranges(numbers) -> str:
    nums = sorted(numbers)
    shown = ", ".join(map(str, nums[:12]))
    return shown + (f", ... ({len(nums)} in all)" if len(nums) > 12 else "")


def merge_runs(dirs: list[Path], out: Path | None, allow_missing: bool = False,
               parent: Path | None = None) -> tuple[Path, dict]:
    """Combine the shards of one configuration into one run directory; returns it and its summary.

    Refuses runs whose saved settings differ in anything but the shard id and runtime flags, a shard given twice,
    a missing shard, an item recorded by two runs, and (unless allow_missing) items a shard has not finished."""
    dirs = [Path(d) for d in dirs]
    configs = [read_config(d) for d in dirs]
    ignore = set(RUNTIME_FLAGS) | {"shard_id"}
    ref, ref_dir = configs[0], dirs[0]
    for d, cfg in zip(dirs[1:], configs[1:]):
        diff = differences(ref["args"], cfg["args"], ignore)
        if ref.get("dtype") != cfg.get("dtype"):
            diff["dtype"] = (ref.get("dtype"), cfg.get("dtype"))
        if diff:
            raise ScaleOutError(f"{d} is not a shard of the same run as {ref_dir}: "
                                f"{describe_diff(diff, ref_dir.name, d.name)}")

    k = ref["args"].get("num_shards", 1)
    shard_of = [cfg["args"].get("shard_id", 0) for cfg in configs]
    twice = {s: [str(d) for d, t in zip(dirs, shard_of) if t == s] for s, c in Counter(shard_of).items() if c > 1}
    if twice:
        s, where = next(iter(twice.items()))
        raise ScaleOutError(f"shard {s} is given {len(where)} times ({', '.join(where)}); keep one run per shard")
    missing_shards = sorted(set(range(k)) - set(shard_of))
    if missing_shards and not allow_missing:
        raise ScaleOutError(f"missing shard(s) {_ranges(missing_shards)} of {k}: run them (--num_shards {k} "
                            f"--shard_id I) and pass their run directories, or merge anyway with --allow_missing")

    records: dict[int, dict] = {}
    owner: dict[int, Path] = {}
    for d, cfg in zip(dirs, configs):
        got = collect(d)
        expected = set(cfg.get("scale_out", {}).get("items", got))
        for idx in got:
            if idx in owner:
                raise ScaleOutError(f"item {idx} is recorded by both {owner[idx]} and {d}: these runs overlap")
            owner[idx] = d
        stray = set(got) - expected
        if stray:
            raise ScaleOutError(f"{d} holds items {_ranges(stray)} that are not in its shard")
        lacking = expected - set(got)
        if lacking and not allow_missing:
            raise ScaleOutError(f"{d} lacks items {_ranges(lacking)} ({len(lacking)} of {len(expected)}): finish it "
                                f"with python run.py --resume {d}, or merge anyway with --allow_missing")
        records.update(got)

    if out is None:
        base = re.sub(r"_shard\d+of\d+", "", ref_dir.name)
        base = re.sub(r"_\d{8}-\d{6}(-\d+)?$", "", base)
        out = new_run_dir(Path(parent or ref_dir.parent), f"{base}_merged{k}_{datetime.now():%Y%m%d-%H%M%S}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ScaleOutError(f"--out {out} exists and is not empty; choose a new folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ScaleOutError(f"cannot create --out {out} ({why_not(out, e)}); give a writable folder") from None

    args = dict(ref["args"], num_shards=1, shard_id=0)
    total = ref.get("scale_out", {}).get("items_total", len(records))
    config = dict(ref, args=args)
    config["scale_out"] = {"processes": None, "num_shards": 1, "shard_id": 0, "items_total": total,
                           "items": sorted({i for cfg in configs for i in cfg.get("scale_out", {}).get("items", [])}
                                           | set(records))}
    config["merged_from"] = [{"run_dir": str(d), "shard_id": s, "device": cfg.get("device"),
                              "environment": cfg.get("environment")} for d, s, cfg in zip(dirs, shard_of, configs)]
    write_json(out / "config.json", config)
    write_results(out / "results.jsonl", records)
    summary = summarize(list(records.values()), argparse.Namespace(**args), ref.get("data", {}), expected_n=total)
    summary["run_dir"] = str(out)
    summary["merged_from"] = [str(d) for d in dirs]
    write_json(out / "summary.json", summary)
    return out, summary


def merge_main(argv: list[str]) -> int:
    """python run.py merge RUN_DIR... [--out DIR] [--allow_missing]"""
    p = argparse.ArgumentParser(prog="run.py merge",
                                description="Combine the shards of one run (--num_shards/--shard_id) into one run "
                                            "directory with results.jsonl in item order and one summary.json.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="the shards' run directories")
    p.add_argument("--out", default=None, help="the merged run directory (default: beside the first shard)")
    p.add_argument("--output_dir", default=None,
                   help="parent folder for the merged run directory, as for a run (ignored with --out)")
    p.add_argument("--allow_missing", action="store_true",
                   help="write the merge even if shards or items are missing (the summary says complete: false)")
    a = p.parse_args(argv)
    try:
        out, summary = merge_runs(a.run_dirs, a.out, a.allow_missing, a.output_dir)
    except (ScaleOutError, RunDirError) as e:
        print(f"run.py merge: error: {e}", file=sys.stderr)
        return 2
    print(f"[merge] {len(a.run_dirs)} runs -> {out}", file=sys.stderr)
    print(json.dumps(summary))
    return 0
