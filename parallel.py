"""Scale-out: data-parallel processes, shards for job arrays, and merging the shards of one run.

Data parallel: `torchrun --nproc_per_node N run.py ...` or `accelerate launch --num_processes N run.py ...` start N
copies of the run. Each reads its rank from the launcher's environment (RANK, WORLD_SIZE, LOCAL_RANK), takes every
N-th item of the task (interleaved, so long and short items spread evenly), and appends its records to its own part
file (rundir.py: RUN_DIR/parts/part-<rank>.jsonl, flushed per item). When a process is done it leaves a marker beside
its part; the main process (rank 0) waits for every marker, merges everything in the run directory into one
results.jsonl in item order, removes the parts and writes the one summary.json. The processes talk to each other
once, at the start, to agree on the run directory (`Launch.agree`, a gloo broadcast: no GPU collective, no timeout
while the ranks work at different speeds); after that the file system is the only channel, so the run directory
must be on a file system every process sees. The main process holds the directory's lock for the whole run before
it tells the others where to write; a launch whose main process cannot take it ends in every process with one line
naming the holder.

Resume works per part (the items done are those in results.jsonl and in every part file, whoever wrote them), so a
run can be resumed with the same, another or no launcher.

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
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from config import RunConfig
from errors import RunError
from rundir import (
    CONFIG,
    RESULTS,
    SUMMARY,
    collect,
    describe_diff,
    load_config,
    new_run_dir,
    summarize,
    why_not,
    write_json,
    write_results,
)

DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


class ScaleOutError(RunError):
    """A launch, shard or merge that cannot work as asked; the message names the fix."""


# --- this process's place in the launch -----------------------------------------------------------------------------

@dataclass
class Launch:
    """This process's place in the launch: its rank among `world` processes and the shard of the items it serves."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    num_shards: int = 1
    shard_id: int = 0

    @classmethod
    def from_config(cls, cfg: RunConfig, env=None) -> Launch:
        """The launcher's ranks (torchrun and accelerate launch both set RANK / WORLD_SIZE / LOCAL_RANK) and the
        shard settings, checked against the device settings."""
        env = os.environ if env is None else env
        try:
            world, rank = int(env.get("WORLD_SIZE", "1")), int(env.get("RANK", "0"))
            local_rank = int(env.get("LOCAL_RANK", str(rank)))
        except ValueError as e:
            raise ScaleOutError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers ({e})") from None
        launch = cls(rank, world, local_rank, cfg.data.num_shards, cfg.data.shard_id)
        if not 0 <= launch.shard_id < launch.num_shards:
            raise ScaleOutError(f"--shard_id {launch.shard_id} is outside 0..{launch.num_shards - 1} "
                                f"(--num_shards {launch.num_shards})")
        hw = cfg.hardware
        if hw.device_map:
            if world > 1:
                raise ScaleOutError("--device_map spreads one model over all visible GPUs, so it cannot share them "
                                    "with other processes of a data-parallel launch: run one process per GPU group "
                                    "(CUDA_VISIBLE_DEVICES) with --num_shards / --shard_id instead")
            if hw.device != "auto":
                raise ScaleOutError(f"--device_map places the model itself; drop --device {hw.device}")
            if hw.device_map not in DEVICE_MAPS and not Path(hw.device_map).is_file():
                raise ScaleOutError(f"--device_map {hw.device_map!r} is neither one of {', '.join(DEVICE_MAPS)} nor a "
                                    "JSON file mapping module names to devices")
        if hw.max_memory:
            if not hw.device_map:
                raise ScaleOutError("--max_memory limits what --device_map puts on each device; give --device_map")
            parse_max_memory(hw.max_memory)
        if world > 1 and re.fullmatch(r"cuda:\d+", hw.device):
            raise ScaleOutError(f"--device {hw.device} would put all {world} processes on one GPU; use --device "
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

    def agree(self, values: list) -> list:
        """Rank 0's `values` in every process (the one time the processes talk)."""
        return _broadcast_from_main(values) if self.world > 1 else list(values)


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


# --- python run.py merge RUN_DIR... -----------------------------------------------------------------------------------

def _ranges(numbers) -> str:
    nums = sorted(numbers)
    shown = ", ".join(map(str, nums[:12]))
    return shown + (f", ... ({len(nums)} in all)" if len(nums) > 12 else "")


def merge_runs(dirs: list[Path], out: Path | None, allow_missing: bool = False,
               parent: Path | None = None) -> tuple[Path, dict]:
    """Combine the shards of one configuration into one run directory; returns it and its summary.

    Refuses runs whose saved settings differ in anything but the shard id and runtime settings, a shard given twice,
    a missing shard, an item recorded by two runs, and (unless allow_missing) items a shard has not finished."""
    dirs = [Path(d) for d in dirs]
    loaded = [load_config(d) for d in dirs]  # (config.json, its RunConfig) per shard
    k = _check_shards(dirs, loaded, allow_missing)
    records = _gather(dirs, [config for config, _ in loaded], allow_missing)
    out = _merged_dir(out, dirs[0], parent, k)

    (ref, settings), configs = loaded[0], [config for config, _ in loaded]
    settings = settings.updated({"num_shards": 1, "shard_id": 0})
    total = ref.get("scale_out", {}).get("items_total", len(records))
    config = dict(ref, args=settings.flat())
    config["scale_out"] = {"processes": None, "num_shards": 1, "shard_id": 0, "items_total": total,
                           "items": sorted({i for c in configs for i in c.get("scale_out", {}).get("items", [])}
                                           | set(records))}
    config["merged_from"] = [{"run_dir": str(d), "shard_id": s.data.shard_id, "device": c.get("device"),
                              "environment": c.get("environment")} for d, (c, s) in zip(dirs, loaded)]
    write_json(out / CONFIG, config)
    write_results(out / RESULTS, records)
    summary = summarize(list(records.values()), settings, ref.get("data", {}), expected_n=total)
    summary["run_dir"] = str(out)
    summary["merged_from"] = [str(d) for d in dirs]
    write_json(out / SUMMARY, summary)
    return out, summary


def _check_shards(dirs: list[Path], loaded: list[tuple[dict, RunConfig]], allow_missing: bool) -> int:
    """The runs are shards of one configuration, each given once, all there (unless allow_missing); returns K."""
    (ref, ref_settings), ref_dir = loaded[0], dirs[0]
    for d, (config, settings) in zip(dirs[1:], loaded[1:]):
        diff = ref_settings.differences(settings, ignore={"shard_id"})
        if ref.get("dtype") != config.get("dtype"):
            diff["dtype"] = (ref.get("dtype"), config.get("dtype"))
        if diff:
            raise ScaleOutError(f"{d} is not a shard of the same run as {ref_dir}: "
                                f"{describe_diff(diff, ref_dir.name, d.name)}")
    k = ref_settings.data.num_shards
    shard_of = [settings.data.shard_id for _, settings in loaded]
    twice = {s: [str(d) for d, t in zip(dirs, shard_of) if t == s] for s, c in Counter(shard_of).items() if c > 1}
    if twice:
        s, where = next(iter(twice.items()))
        raise ScaleOutError(f"shard {s} is given {len(where)} times ({', '.join(where)}); keep one run per shard")
    missing_shards = sorted(set(range(k)) - set(shard_of))
    if missing_shards and not allow_missing:
        raise ScaleOutError(f"missing shard(s) {_ranges(missing_shards)} of {k}: run them (--num_shards {k} "
                            f"--shard_id I) and pass their run directories, or merge anyway with --allow_missing")
    return k


def _gather(dirs: list[Path], configs: list[dict], allow_missing: bool) -> dict[int, dict]:
    """Every shard's records; no item twice, none outside its shard, none missing (unless allow_missing)."""
    records: dict[int, dict] = {}
    owner: dict[int, Path] = {}
    for d, config in zip(dirs, configs):
        got = collect(d)
        expected = set(config.get("scale_out", {}).get("items", got))
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
    return records


def _merged_dir(out: Path | None, ref_dir: Path, parent: Path | None, k: int) -> Path:
    """--out (new or empty), else a new folder named after the first shard, beside it or in --output_dir."""
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
    return out


def add_merge_arguments(p: argparse.ArgumentParser) -> None:
    """python run.py merge RUN_DIR... [--out DIR] [--allow_missing]"""
    p.description = ("Combine the shards of one run (--num_shards/--shard_id) into one run directory with "
                     "results.jsonl in item order and one summary.json.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="the shards' run directories")
    p.add_argument("--out", default=None, help="the merged run directory (default: beside the first shard)")
    p.add_argument("--output_dir", default=None,
                   help="parent folder for the merged run directory, as for a run (ignored with --out)")
    p.add_argument("--allow_missing", action="store_true",
                   help="write the merge even if shards or items are missing (the summary says complete: false)")


def merge_command(a: argparse.Namespace) -> int:
    out, summary = merge_runs(a.run_dirs, a.out, a.allow_missing, a.output_dir)
    print(f"[merge] {len(a.run_dirs)} runs -> {out}", file=sys.stderr)
    print(json.dumps(summary))
    return 0
