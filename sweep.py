"""Sweeps: one experiment file, a grid of ordinary runs.

    python run.py sweep FILE.yaml [--dry_run] [--cell_shard I/N] [flags]

FILE is an experiment file (config.py: flag names, flat or in sections) in which any key may hold a list: each list
is an axis and the sweep runs their cross product, one run directory per cell. A `grid:` key may hold a list of
mappings; each is a sub-grid crossed with the top-level axes, and the cells are their union (a table that is no full
cross product: baseline and text_mas once, latent_mas per policy and keep ratio). Flags after FILE replace the
file's value of that key wherever it is set (an axis becomes one value), else apply to every cell.

    method: latent_mas
    kv_policy: [knn-top, streaming]
    kv_keep: [0.5, 0.9]
    seed: [1, 2]
    output_dir: runs/my_sweep          # the sweep's folder: one run directory per cell

Each cell is OUTPUT_DIR/<name>, the name made from the cell's values on the keys the file varies
(`knn-top_k0.5_s1`), so running the sweep again continues it: a complete cell is skipped, an unfinished one resumes
item by item (the --run_dir machinery of rundir.py; a folder holding other settings is refused). A cell that the
configuration's rules refuse (kv_keep without a policy, ...) is listed with the reason and skipped; the sweep goes on.

Cells run in this process, grouped by model: a model (--model_name or a team agent's) is loaded once per (model,
device, dtype, attention, device map, compile) and kept while a later cell needs it; every cell of it runs on the
same weights, each with a fresh wrapper (seeded as a run of its own, so its records equal those of a separate run);
realignment and latent maps are built once per model (pair). With --fidelity, cells that differ only in compression
settings run batch by batch side by side and share one uncompressed reference per batch of items. --cell_shard I/N
runs cells I, I+N, ... (a SLURM array, one process per GPU); several processes on one sweep folder never write the
same cell (each cell's run directory is locked). At the end: a table of the cells (sweep.md) and the report command.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import itertools
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import runner
import strictfiles
from config import (
    FLAGS,
    ConfigError,
    RunConfig,
    _bounded,
    add_settings,
    check,
    experiment_values,
    keep_text,
    new_run,
    normalize,
    read_mapping,
)
from data.hub import offline_env
from errors import RunError
from parallel import Launch
from registry import TASKS
from rundir import CONFIG, SUMMARY, RunDir, RunDirError, collect, describe_diff, read_config, write_atomic

LABEL = "sweep"
# cells a sweep may have unless raised on purpose (--max_cells): a run checks and lists every cell before anything
# runs (about 0.4 ms each), and a grid this large is more often a typo (an extra axis) than a plan
MAX_CELLS = 10_000
MODEL_KEYS = ("model_name", "device", "dtype", "attn_implementation", "device_map", "max_memory", "compile")
# settings that the uncompressed reference of --fidelity does not depend on: cells differing only in these share it
REFERENCE_FREE = frozenset({"kv_policy", "kv_keep", "kv_min_keep", "kv_scope", "kv_query", "kv_protect",
                            "kv_positions", "compress_at", "knn_filter", "knn_strategy", "fidelity", "show_heatmaps",
                            "save_embeddings", "temperature", "top_p"})
# how a cell's name shows a value: a short prefix (k0.5), the bare value (knn-top), or key-value
PREFIX = {"seed": "s", "latent_steps": "m", "max_samples": "n", "temperature": "t", "top_p": "p",
          "max_new_tokens": "tok", "kv_min_keep": "min", "generate_bs": "bs", "text_mas_context_length": "ctx"}
BARE = {"method", "task", "model_name", "kv_policy", "prompt", "kv_positions", "kv_scope", "compress_at", "kv_query",
        "kv_protect", "data_source", "dtype", "knn_strategy", "split", "agents", "data_path"}
SWITCH_WORDS = {"include_old_prompts": ("stacked", "unstacked"), "prefix_reuse": ("prefix-reuse", "no-prefix-reuse")}


@dataclass
class Cell:
    index: int  # position in the sweep's order (cells grouped by model): --cell_shard I/N takes index % N == I
    name: str
    given: dict  # the cell's settings as given (file and flags), field names
    path: Path
    cfg: RunConfig | None = None
    team: object = None
    refused: str | None = None  # the configuration's rules refuse this combination: listed, never run
    warnings: list[str] = field(default_factory=list)
    status: str = ""  # after running: ran, resumed, complete, refused, failed, busy, interrupted
    on_disk: str = ""  # disk_state when the sweep was listed: new, partial, complete, other
    note: str = ""

    @property
    def model_key(self) -> tuple:
        cfg = self.cfg or RunConfig()
        return tuple(cfg.get(k) for k in MODEL_KEYS)


@dataclass
class Sweep:
    file: Path
    folder: Path
    cells: list[Cell]  # filled by plan(); a dry run lists stream(sweep) instead, cell by cell
    varied: list[str]  # the keys the file varies: they name the cells
    duplicates: int = 0  # cells dropped for settings equal to an earlier cell's (counted as they are met)
    size: int = 0  # grid_size: the cells before duplicates are dropped
    grids: list[dict] = field(default_factory=list)  # per sub-grid its settings merged with the top level's, flags in
    name_of: Callable[[dict], str] | None = None  # a cell's folder name from its settings


# --- the file: axes, sub-grids, overrides ----------------------------------------------------------------------------

def read_sweep(path: str, overrides: dict) -> tuple[dict, list[dict]]:
    """(top-level settings, sub-grids) of a sweep file, values checked; a tuple value is an axis. `overrides` (from
    flags) replace the key where the file sets it (top level and sub-grids), else go to the top level."""
    path = Path(path)
    mapping = dict(read_mapping(path, LABEL))
    grid = mapping.pop("grid", None)
    base = experiment_values(mapping, path, lists=True, label=LABEL)
    if grid is None:
        entries = []
    elif isinstance(grid, list) and grid and all(isinstance(g, dict) for g in grid):
        entries = [experiment_values(g, path, lists=True, label=LABEL) for g in grid]
    else:
        raise ConfigError(f"{LABEL} {path}: grid: give a list of mappings (each a sub-grid: method: latent_mas, "
                         "kv_keep: [0.5, 0.9], ...)")
    for where, values in [("", base)] + [(f"grid entry {i + 1}: ", e) for i, e in enumerate(entries)]:
        if "run_dir" in values:
            raise ConfigError(f"{LABEL} {path}: {where}run_dir: the sweep names each cell's folder; give output_dir "
                             "(the sweep's folder) instead")
        if "output_dir" in values and (where or isinstance(values["output_dir"], tuple)):
            raise ConfigError(f"{LABEL} {path}: {where}output_dir: a sweep has one folder; give one output_dir at "
                             "the top level")
    for key, value in overrides.items():
        placed = False
        for values in (base, *entries):
            if key in values:
                values[key] = value
                placed = True
        if not placed:
            base[key] = value
    return base, entries


def grid_size(base: dict, entries: list[dict]) -> int:
    """How many cells `expand` would build, before any is built: per sub-grid the product of its axes' lengths (an
    upper bound: duplicates are dropped later)."""
    total = 0
    for entry in entries or [{}]:
        merged = {**base, **entry}
        total += math.prod(len(v) for v in merged.values() if isinstance(v, tuple))
    return total


def check_size(size: int, path, max_cells: int = MAX_CELLS) -> None:
    if size > max_cells:
        raise ConfigError(f"{LABEL} {path}: the grid has {size} cells (the product of its axes' lengths), over the "
                         f"limit of {max_cells}; drop an axis or split the file, or raise the limit on purpose with "
                         f"--max_cells {size}")


def expand(base: dict, entries: list[dict]) -> list[dict]:
    """Every cell's settings: per sub-grid (or the file alone) the cross product of its axes and the top level's
    (a sub-grid's value wins over the top level's), in file order, first axis slowest; duplicates dropped."""
    cells, seen = [], set()
    for entry in entries or [{}]:
        merged = {**base, **entry}
        axes = [k for k, v in merged.items() if isinstance(v, tuple)]
        for combo in itertools.product(*(merged[k] for k in axes)):
            cell = {**merged, **dict(zip(axes, combo))}
            key = json.dumps(cell, sort_keys=True, default=str)
            if key not in seen:
                seen.add(key)
                cells.append(cell)
    return cells


def naming_keys(grids: list[dict]) -> list[str]:
    """The keys whose values differ between cells (a key some cells leave out counts as differing), in the order of
    the flags (method, model, task, ..., seed), so that reordering a file never renames its cells. Read from the
    sub-grids (`grids`: each merged with the top level), without building the cells: every value of an axis is in
    some cell, as axes are never empty."""
    values: dict[str, set] = {}
    for g in grids:
        for k, v in g.items():
            axis = v if isinstance(v, tuple) else (v,)
            values.setdefault(k, set()).update(json.dumps(x, default=str) for x in axis)
    for k, vs in values.items():
        if any(k not in g for g in grids):
            vs.add("<absent>")
    return [k for k in FLAGS if k != "output_dir" and len(values.get(k, ())) > 1]


def name_part(key: str, value) -> str:
    if isinstance(value, bool):
        word = key.replace("_", "-")
        return SWITCH_WORDS.get(key, (word, f"no-{word}"))[0 if value else 1]
    if value is None:
        text = "none"
    elif key == "kv_keep":
        return keep_text(value)
    elif key == "max_samples" and value == -1:
        text = "all"
    elif key in ("model_name", "agents", "data_path"):
        p = Path(str(value).rstrip("/"))
        text = p.name if key == "model_name" else p.stem
    else:
        text = f"{value:g}" if isinstance(value, float) else str(value)
    text = re.sub(r"[^A-Za-z0-9._+-]+", "-", text)  # no path separators, spaces or shell characters
    if key in PREFIX:
        text = PREFIX[key] + text
    elif key not in BARE or not re.search(r"[A-Za-z0-9]", text) or text.startswith("-"):
        # a bare "", ".", ".." would name output_dir or its parent, and "-x" reads as an option in a shell
        text = f"{key}-{text}"
    return text


def cell_names(cells: list[dict], keys: list[str]) -> list[str]:
    """One folder name per cell from its values on `keys` (those it gives); names that would clash get a short hash
    of the cell's settings, so every name is unique and the same on every run of the sweep."""
    names = ["_".join(name_part(k, c[k]) for k in keys if k in c) or "run" for c in cells]
    digest = [hashlib.sha1(json.dumps(c, sort_keys=True, default=str).encode()).hexdigest()[:6] for c in cells]
    names = [n if len(n) <= 150 else f"{n[:140]}-{d}" for n, d in zip(names, digest)]
    counts = collections.Counter(names)
    return [f"{n}-{d}" if counts[n] > 1 else n for n, d in zip(names, digest)]


def cell_path(folder: Path, name: str) -> Path:
    """FOLDER/NAME, checked to be a folder directly inside FOLDER (name_part makes names safe; this is the guard
    that a change there can never write outside the sweep's folder)."""
    path = folder / name
    if name in ("", ".", "..") or "/" in name or os.sep in name or "\0" in name \
            or Path(os.path.normpath(path)).parent != Path(os.path.normpath(folder)):
        raise ConfigError(f"{LABEL}: the cell name {name!r} would not be a folder inside {folder}")
    return path


def direct_names(grids: list[dict], keys: list[str]) -> Callable[[dict], str] | None:
    """A cell's name from its own settings, when no two cells of `grids` can get one name (so no clash needs the
    whole grid): every sub-grid gives the same naming keys, each key's values give distinct parts, at most one key's
    parts hold the separator "_", and no name passes 150 characters. Then two cells differ in some key's part and
    the parts split back apart. None otherwise (cell_names over every cell decides)."""
    present = {tuple(k for k in keys if k in g) for g in grids}
    if len(present) != 1:
        return None
    (order,) = present
    underscored, longest = 0, len(order) - 1
    for k in order:
        values = {json.dumps(v, default=str): v for g in grids for v in (g[k] if isinstance(g[k], tuple) else (g[k],))}
        parts = {name_part(k, v) for v in values.values()}
        if len(parts) < len(values):
            return None
        underscored += any("_" in p for p in parts)
        longest += max(map(len, parts))
    if underscored > 1 or longest > 150:
        return None
    return lambda cell: "_".join(name_part(k, cell[k]) for k in order) or "run"


def _digest(settings: dict) -> bytes:
    """A short fingerprint of settings: what the duplicate checks keep per cell (a grid may hold 10^6 cells)."""
    return hashlib.blake2b(json.dumps(settings, sort_keys=True, default=str).encode(), digest_size=16).digest()


def ordered(grids: list[dict]) -> Iterator[dict]:
    """Every cell's settings in the sweep's order, one at a time: grouped by model (MODEL_KEYS, the models in the
    order the file first gives them), file order within a model (per sub-grid the cross product of its axes, first
    axis slowest); cells given twice dropped. Equal to sorting `expand`'s cells by model, without building them all
    first: per model only the axes' values of that model are crossed."""
    defaults = RunConfig()

    def model_of(cell: dict) -> tuple:
        return tuple(cell[k] if k in cell else defaults.get(k) for k in MODEL_KEYS)

    models = {}
    for g in grids:  # the models in order of first appearance: the cross product of the model axes alone
        axes = [k for k in MODEL_KEYS if isinstance(g.get(k), tuple)]
        for combo in itertools.product(*(g[k] for k in axes)):
            models.setdefault(model_of({**g, **dict(zip(axes, combo))}), None)
    seen = set()
    for m in models:
        for g in grids:
            axes = [k for k, v in g.items() if isinstance(v, tuple)]
            choices = [[x for x in g[k] if k not in MODEL_KEYS or x == m[MODEL_KEYS.index(k)]] for k in axes]
            for combo in itertools.product(*choices):
                cell = {**g, **dict(zip(axes, combo))}
                if model_of(cell) != m:  # a model setting this sub-grid fixes to another value
                    break
                key = _digest(cell)
                if key not in seen:
                    seen.add(key)
                    yield cell


def outline(path: str, overrides: dict, max_cells: int = MAX_CELLS) -> Sweep:
    """The sweep without its cells: the file read, its size checked (a grid over max_cells cells is refused before
    any cell is built), the naming keys and the sweep's folder. stream() then builds the cells one by one."""
    base, entries = read_sweep(path, overrides)
    as_written = read_sweep(path, {})  # names come from what the file varies, so a flag never renames a cell
    size = grid_size(base, entries)
    check_size(max(size, grid_size(*as_written)), path, max_cells)
    keys = naming_keys([{**as_written[0], **e} for e in as_written[1] or [{}]])
    grids = [{**base, **e} for e in entries or [{}]]
    name_of = direct_names(grids, keys)
    if name_of is None:  # names that may clash: each needs every other cell's (about 25 us a cell)
        given = expand(base, entries)
        names = dict(zip(map(_digest, given), cell_names(given, keys)))
        name_of = (lambda cell: names[_digest(cell)])  # noqa: E731
    folder = Path(base.get("output_dir") or Path("runs") / f"sweep_{Path(path).stem}")
    return Sweep(Path(path), folder, [], keys, size=size, grids=grids, name_of=name_of)


def stream(sweep: Sweep) -> Iterator[Cell]:
    """The sweep's cells in order (grouped by model), each checked (or refused, with the reason) as it is reached;
    cells whose settings equal an earlier cell's (a flag collapsed an axis, knn_filter spells a policy) are dropped
    and counted in sweep.duplicates. A cell name that is no folder inside the sweep's raises ConfigError there."""
    teams: dict = {}
    seen: set = set()
    index = 0
    for given in ordered(sweep.grids):
        name = sweep.name_of(given)
        c = _checked(Cell(index, name, given, cell_path(sweep.folder, name)), teams)
        if not c.refused:
            # knn_filter and knn_strategy spell kv_policy
            key = _digest({k: v for k, v in c.cfg.flat().items()
                           if k not in ("run_dir", "output_dir", "knn_filter", "knn_strategy")})
            if key in seen:
                sweep.duplicates += 1
                continue
            seen.add(key)
        index += 1
        yield c


def plan(path: str, overrides: dict, max_cells: int = MAX_CELLS) -> Sweep:
    """The sweep's cells, checked, named and ordered (grouped by model), without touching the disk."""
    sweep = outline(path, overrides, max_cells)
    sweep.cells = list(stream(sweep))
    return sweep


def _checked(cell: Cell, teams: dict | None = None) -> Cell:
    """The cell's configuration and team, or the one line saying why the rules refuse it. `teams`: teams read so
    far, by what they are read from (a sweep reads each team file once, not once per cell)."""
    given = {**cell.given, "run_dir": str(cell.path)}
    try:
        cell.cfg = RunConfig().updated(given)
        cfg = new_run(given)
        normalize(cfg)
        cell.warnings = check(cfg, given)
        Launch.from_config(cfg, env={})
        key = (cfg.method == "baseline", cfg.team.agents, cfg.team.prompt, cfg.team.first_agent_text)
        if teams is None or key not in teams:
            team = runner.team_of(cfg)
            if teams is not None:
                teams[key] = team
        cell.cfg, cell.team = cfg, teams[key] if teams is not None else team
    except RunError as e:
        cell.refused = str(e)
    return cell


# --- what is on disk (read only) -------------------------------------------------------------------------------------

def disk_state(cell: Cell) -> tuple[str, str]:
    """("new" | "partial" | "complete" | "other", detail) of the cell's folder, read without writing anything."""
    p = cell.path
    try:
        if not (p / CONFIG).exists():
            return "new", ""
    except OSError as e:  # a name too long, a folder without permission: Path.exists raises those
        return "other", f"unusable ({e.strerror})"
    try:
        saved = RunConfig.from_saved(read_config(p)["args"])
        diff = saved.differences(cell.cfg)
        done = len(collect(p))
        summary = strictfiles.parse((p / SUMMARY).read_text(), "json") if (p / SUMMARY).exists() else None
    except (RunDirError, OSError, ValueError) as e:
        return "other", f"unreadable ({e})"
    if diff:
        return "other", f"holds another run ({describe_diff(diff, 'saved', 'sweep')})"
    if summary and summary.get("complete"):
        return "complete", f"{summary.get('n')} items"
    return "partial", f"{done} items done"


def item_count(cfg: RunConfig) -> tuple[int | None, str]:
    """How many items a cell runs, from the settings and the task registry alone (no data is read)."""
    d, spec = cfg.data, TASKS[cfg.data.task]
    total = None
    if not d.data_path:
        source = d.data_source
        if source == "auto":
            source = "package" if offline_env() and spec.package else "hub"
        if source == "hub" and d.split in (None, spec.hub_split):
            total = spec.hub_size
        elif source == "package" and spec.package:
            total = next((n for s, _, n in spec.package.splits if s == (d.split or spec.package.split)), None)
    n = total if d.max_samples == -1 else (min(d.max_samples, total) if total else d.max_samples)
    if n is not None and d.num_shards > 1:
        n = len(range(d.shard_id, n, d.num_shards))
    if n is None:
        return None, "all"
    text = f"all ({n})" if d.max_samples == -1 else (f"<={n}" if total is None else str(n))
    return n, text + (f" (shard {d.shard_id}/{d.num_shards})" if d.num_shards > 1 else "")


# --- listing ---------------------------------------------------------------------------------------------------------

def _model_label(key: tuple) -> str:
    extra = ", ".join(f"{k}={v}" for k, v in zip(MODEL_KEYS[1:], key[1:]) if v not in (None, False, "auto"))
    return f"{key[0]}" + (f" ({extra})" if extra else "")


def listing(sweep: Sweep, cells: Iterable[Cell], shard: tuple[int, int] | None, tally: dict,
            keep: bool = True) -> Iterator[str]:
    """The sweep's lines, one at a time: a cell's line as soon as it is checked and its folder looked at (`cells`:
    plan's list or stream(), so a dry run of a large grid starts at once). `tally` gets "cells" (all), "refused",
    "first_refused" (its reason), "warnings" (warning -> cells) and, with `keep`, "mine" (this shard's cells; a dry
    run keeps none, so a grid of 10^6 cells lists in little memory)."""
    yield (f"sweep {sweep.file}: up to {sweep.size} cells (the grid before duplicates are dropped) in "
           f"{sweep.folder}")
    if shard:
        yield f"cell shard {shard[0]}/{shard[1]}: cells {shard[0]}, {shard[0] + shard[1]}, ..."
    yield f"{'#':>4}  {'items':>12}  {'state':<10}  folder"
    n = refused = total = unknown = n_mine = 0
    mine, models, warned = [], {}, tally.setdefault("warnings", {})
    for c in cells:
        n, refused = n + 1, refused + bool(c.refused)
        if c.refused:
            tally.setdefault("first_refused", c.refused)
        if shard and c.index % shard[1] != shard[0]:
            continue
        if keep:
            mine.append(c)
        n_mine += 1
        if c.refused:
            yield f"{c.index:>4}  {'-':>12}  {'refused':<10}  {c.path}: {c.refused}"
            continue
        count_warnings(warned, c, sweep.varied)
        models[c.model_key] = models.get(c.model_key, 0) + 1
        k, text = item_count(c.cfg)
        total, unknown = total + (k or 0), unknown + (k is None)
        state, detail = disk_state(c)
        c.on_disk = state
        yield f"{c.index:>4}  {text:>12}  {state:<10}  {c.path}" + (f"  ({detail})" if detail else "")
    tally.update(cells=n, refused=refused, mine=mine)
    yield (f"{n} cells ({refused} refused by the rules, skipped"
           + (f"; {sweep.duplicates} duplicates dropped" if sweep.duplicates else "") + ")"
           + (f"; cell shard {shard[0]}/{shard[1]}: {n_mine} of {n}" if shard else ""))
    yield f"items over all cells: {total}" + (f" + {unknown} cells of unknown size" if unknown else "")
    yield "models, each loaded once: " + "; ".join(f"{_model_label(m)}: {k} cells" for m, k in models.items())


def count_warnings(seen: dict[str, int], cell: Cell, varied: list[str]) -> None:
    """Add the cell's warnings to `seen` (warning -> cells). A sweep over methods (or tasks) sets some keys for all
    of them on purpose, so "--latent_steps does nothing for --method baseline" is left out when it varies the
    method."""
    quiet = tuple(f"does nothing for --{k} " for k in ("method", "task") if k in varied)
    for w in cell.warnings:
        if not (quiet and any(q in w for q in quiet)):
            seen[w] = seen.get(w, 0) + 1


def warning_lines(seen: dict[str, int]) -> list[str]:
    return [f"{LABEL}: warning ({n} cell{'s' if n > 1 else ''}): {w}" for w, n in seen.items()]


def warnings_once(cells: list[Cell], varied: list[str]) -> list[str]:
    """Each cell's warnings once, with the number of cells (count_warnings)."""
    seen: dict[str, int] = {}
    for c in cells:
        count_warnings(seen, c, varied)
    return warning_lines(seen)


# --- running ---------------------------------------------------------------------------------------------------------

def pool_key(cfg: RunConfig) -> tuple:
    """What the loaded weights of cfg's model depend on: the model (a local folder by its real path, as a team
    names it) and the hardware settings in MODEL_KEYS."""
    from models import model_identity

    return (model_identity(cfg.model.model_name), *(cfg.get(k) for k in MODEL_KEYS[1:]))


def needs(cell: Cell) -> set[tuple]:
    """The pool keys of the models the cell's run loads: --model_name's, or every model its team names."""
    cfg = cell.cfg
    names = cell.team.model_names(cfg.model.model_name) if cell.team is not None else (cfg.model.model_name,)
    return {pool_key(cfg.updated({"model_name": n})) for n in names}


class ModelPool(runner.Loader):
    """The sweep's models: each distinct model (pool_key) loaded when the first cell needs it and kept while a later
    cell still needs it (run_sweep releases the others after each unit of work), with the realignment matrix per
    (model, --realign) and the latent map per pair of models built once. Every cell gets a fresh wrapper on the
    kept weights, seeded as a run of its own."""

    def __init__(self):
        self.loaded: dict[tuple, tuple] = {}  # pool key -> (model, tokenizer, device)
        self.errors: dict[tuple, str] = {}  # pool key -> why it did not load (not tried again for each cell)
        self.key_of: dict[int, tuple] = {}  # id(model) -> its pool key
        self.realigners: dict[tuple, object] = {}  # (pool key, realign method) -> models.Realigner
        self.maps: dict[tuple, object] = {}  # (sender key, receiver key, receiver's latent norm) -> LatentMap
        self.loads = 0

    def wrapper(self, cfg: RunConfig, launch: Launch):
        import models

        key = pool_key(cfg)
        if key not in self.loaded and key not in self.errors:
            hw = cfg.hardware
            print(f"[{LABEL}] loading {cfg.model.model_name} (once for all the cells that use it)", file=sys.stderr)
            try:
                self.loaded[key] = loaded = models.load_model(cfg.model.model_name, launch.device(hw.device), hw.dtype,
                                                              hw.attn_implementation, hw.device_map, hw.max_memory)
                self.key_of[id(loaded[0])] = key
                self.loads += 1
            except models.ModelError as e:
                self.errors[key] = str(e)
        if key in self.errors:
            raise ConfigError(self.errors[key])
        realign = (key, {True: "ridge", False: "norm"}.get(cfg.latent.realign, cfg.latent.realign))
        w = runner.load_wrapper(cfg, launch, loaded=self.loaded[key], realigner=self.realigners.get(realign))
        if w.realigner is not None:
            self.realigners[realign] = w.realigner
        return w

    def latent_map(self, sender, receiver):
        keys = (self.key_of.get(id(sender.model)), self.key_of.get(id(receiver.model)))
        if None in keys:  # not the pool's models: nothing to key it by
            return super().latent_map(sender, receiver)
        # LatentMap.build reads the two models' embeddings and tokenizers and the receiver's latent norm
        key = (*keys, receiver.realigner.target_norm if receiver.realigner is not None else None)
        if key not in self.maps:
            self.maps[key] = super().latent_map(sender, receiver)
        return self.maps[key]

    def keep_only(self, wanted: set[tuple] | None = None) -> None:
        """Release every model not in `wanted` (None: all), with its realignment and latent maps."""
        gone = [k for k in {*self.loaded, *self.errors} if wanted is None or k not in wanted]
        if not gone:
            return
        for k in gone:
            model = self.loaded.pop(k, (None,))[0]
            self.key_of.pop(id(model), None)
            self.errors.pop(k, None)
        self.realigners = {rk: r for rk, r in self.realigners.items() if rk[0] not in gone}
        self.maps = {mk: m for mk, m in self.maps.items() if mk[0] not in gone and mk[1] not in gone}
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def release(self) -> None:
        self.keep_only(None)


def open_cell(cell: Cell, pool: ModelPool, file: Path) -> runner.OpenRun | None:
    """Claim and lock the cell's run directory, load its items on the pool's model, write its config.json; None
    (with the cell's status set) when it cannot run now."""
    if disk_state(cell)[0] == "complete":  # another process (a second sweep on this folder) finished it meanwhile
        cell.status = "complete"
        return None
    launch = Launch.from_config(cell.cfg)
    plan = runner.Plan(cell.cfg, None, cell.team, launch, str(file))
    try:
        run_dir = RunDir.open(cell.cfg, launch)
    except RunDirError as e:
        cell.status, cell.note = ("busy" if "in use by" in str(e) else "refused"), str(e)
        return None
    try:
        o = runner.start(plan, run_dir, pool, again="run the sweep again",
                         label=f"[{LABEL}] cell {cell.index} {cell.name}:", name=cell.name, group=file.stem)
    except RunError as e:
        cell.status, cell.note = "failed", str(e)
        print(f"{LABEL}: error: cell {cell.name}: {cell.note}", file=sys.stderr)
        return None
    cell.status = "resumed" if o.done else "ran"
    return o


def units(cells: list[Cell]) -> list[list[Cell]]:
    """The order of work: one cell at a time, except that --fidelity cells sharing a reference (same model, items,
    batch size and uncompressed team) form one unit, run side by side at the place of its first cell."""
    out, shared = [], {}
    for c in cells:
        cfg = c.cfg
        if cfg.compression.fidelity and cfg.method == "latent_mas":
            key = (c.model_key, cfg.decoding.generate_bs,
                   json.dumps({k: v for k, v in cfg.result_settings().items() if k not in REFERENCE_FREE},
                              sort_keys=True, default=str))
            if key in shared:
                shared[key].append(c)
                continue
            shared[key] = [c]
            out.append(shared[key])
        else:
            out.append([c])
    return out


def run_unit(unit: list[Cell], pool: ModelPool, file: Path) -> bool:
    """Open, run and finish the cells of one unit (runner's loop, as a single run); returns whether Ctrl-C stopped
    it. A disk error in the loop ends the sweep (a RunError saying how to continue)."""
    opened = [(c, o) for c in unit if (o := open_cell(c, pool, file)) is not None]
    if not opened:
        return False
    runs = [o for _, o in opened]
    interrupted = runner.loop(runs, runner.SharedReference() if len(runs) > 1 else None)
    for cell, o in opened:
        try:
            if runner.finish(o, interrupted)[0] == 130:
                cell.status = "interrupted"
        except RunError as e:
            cell.status, cell.note = "failed", str(e)
    return interrupted


# --- the table at the end --------------------------------------------------------------------------------------------

def _fmt(x, digits: int) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def table(cells: list[Cell]) -> list[str]:
    """One Markdown row per cell: status, items, accuracy with its Wilson interval, judger KV MiB, time per item."""
    rows = ["| # | cell | status | items | accuracy [95% CI] | judger KV MiB | time/item s | time s |",
            "|---|---|---|---|---|---|---|---|"]
    for c in cells:
        s = {}
        if not c.refused and (c.path / SUMMARY).exists():
            try:
                s = strictfiles.parse((c.path / SUMMARY).read_text(), "json")
            except (OSError, ValueError):
                s = {}
        status = c.status + (f": {c.note}" if c.note else "")
        ci = s.get("accuracy_ci95") or [None, None]
        acc = f"{_fmt(s.get('accuracy'), 3)} [{_fmt(ci[0], 2)}, {_fmt(ci[1], 2)}]" if s else ""
        n = f"{s.get('n')}" + ("" if s.get("complete", True) else f" of {s.get('n_expected')}") if s else ""
        kv = s.get("kv_bytes_judger_mean")
        rows.append(f"| {c.index} | {c.name} | {status.replace('|', '/')} | {n} | {acc} | "
                    f"{_fmt(kv / 2 ** 20 if kv is not None else None, 2)} | {_fmt(s.get('time_per_sample_s'), 2)} | "
                    f"{_fmt(s.get('time_total_s'), 1)} |")
    return rows


# --- the command -----------------------------------------------------------------------------------------------------

def parse_shard(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m or not 0 <= int(m[1]) < int(m[2]):
        raise argparse.ArgumentTypeError(f"{text!r}: give I/N with 0 <= I < N (cells I, I+N, ... of the sweep), "
                                         "e.g. --cell_shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT")
    return int(m[1]), int(m[2])


def add_arguments(p: argparse.ArgumentParser) -> None:
    """run.py sweep FILE [--dry_run] [--cell_shard I/N] [setting flags]: every setting but --run_dir (each cell's folder
    is named by the sweep); --config and --resume are parsed only to be refused with the reason."""
    p.description = "Run the grid of an experiment file whose keys may hold lists (see docs/experiments.md)."
    g = p.add_argument_group("sweep")
    g.add_argument("file", metavar="FILE", help="sweep file: an experiment file whose keys may hold lists")
    g.add_argument("--dry_run", action="store_true", default=False,
                   help="list every cell (items, folder, state on disk) and exit: loads nothing, writes nothing")
    g.add_argument("--max_cells", type=_bounded(int, lo=1), default=MAX_CELLS, metavar="N",
                   help="refuse a grid of more than N cells (the product of its axes' lengths, computed before any "
                   "cell is built); raise it on purpose for a larger sweep")
    g.add_argument("--cell_shard", type=parse_shard, default=None, metavar="I/N",
                   help="run only cells I, I+N, I+2N, ... (one of N processes: a SLURM array task, a GPU)")
    add_settings(p, defaults=False, hidden=("run_dir",))
    for name in ("config", "resume"):
        p.add_argument(f"--{name}", default=None, help=argparse.SUPPRESS)


def command(args: argparse.Namespace) -> int:
    """The sweep command (run.py turns a RunError into one line and exit 2)."""
    for k in ("config", "resume"):
        if getattr(args, k, None):
            raise ConfigError(f"--{k} does not go with run.py sweep: the sweep file is the configuration, and running "
                              "the sweep again resumes its cells")
    overrides = {k: v for k, v in vars(args).items() if k in FLAGS}
    if "run_dir" in overrides:
        raise ConfigError("--run_dir does not go with run.py sweep: each cell's folder is named by the sweep; give "
                          "--output_dir (the sweep's folder)")
    sweep = outline(args.file, overrides, args.max_cells)
    if args.dry_run:
        return dry_run(sweep, args.cell_shard)
    sweep.cells = list(stream(sweep))
    return run_sweep(sweep, args.cell_shard)


def refused_all(first: str) -> ConfigError:
    return ConfigError(f"every cell is refused by the rules (the first: {first}); fix the sweep file (a grid: list "
                       "keeps such combinations apart)")


def dry_run(sweep: Sweep, shard: tuple[int, int] | None) -> int:
    """List the cells as they are checked (stream): the first line at once however large the grid; a cell that
    cannot be planned ends the listing there with its error (exit 2)."""
    tally: dict = {}
    try:
        for line in listing(sweep, stream(sweep), shard, tally, keep=False):
            print(line, flush=True)
    except BrokenPipeError:  # the reader has what it wanted (run.py sweep FILE --dry_run | head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    for w in warning_lines(tally["warnings"]):
        print(w, file=sys.stderr)
    if tally["refused"] == tally["cells"]:
        raise refused_all(tally["first_refused"])
    print("dry run: nothing was loaded or written")
    return 0


def run_sweep(sweep: Sweep, shard: tuple[int, int] | None) -> int:
    cells = sweep.cells
    tally: dict = {}
    for line in listing(sweep, cells, shard, tally):
        print(line, file=sys.stderr, flush=True)
    mine = tally["mine"]
    for w in warning_lines(tally["warnings"]):
        print(w, file=sys.stderr)
    if all(c.refused for c in cells):
        raise refused_all(cells[0].refused)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("run.py sweep runs one process per GPU: start one sweep per GPU with --cell_shard I/N "
                          "(CUDA_VISIBLE_DEVICES=I), not under torchrun / accelerate launch")
    try:
        sweep.folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot create the sweep folder {sweep.folder} ({e.strerror}); give --output_dir a writable "
                          "folder") from None
    pool, interrupted, error = ModelPool(), False, None
    for c in mine:
        if c.refused:
            c.status, c.note = "refused", c.refused
    work = units([c for c in mine if not c.refused])  # a complete cell is skipped when its turn comes
    # the models each unit loads (none for cells complete on disk), so that each is kept exactly while a later unit
    # still needs it
    wanted = [set().union(*(needs(c) for c in unit if c.on_disk != "complete")) for unit in work]
    left = collections.Counter(k for w in wanted for k in w)
    try:
        for unit, w in zip(work, wanted):
            if run_unit(unit, pool, sweep.file):
                interrupted = True
                break
            left.subtract(w)
            pool.keep_only({k for k, n in left.items() if n > 0})
    except RunError as e:
        error = e
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM while a cell's model or data loaded: the table is still written
        interrupted = True
    finally:
        pool.release()
    for c in mine:
        if not c.status:
            c.status = "not started"
    write_table(sweep, mine, shard, pool.loads)
    if error:
        raise error
    if interrupted:
        print(f"[{LABEL}] interrupted: run the same command again to continue (complete cells are skipped, the "
              "unfinished one resumes)", file=sys.stderr)
        return 130
    # exit 1 for a cell that could not run (a folder holding other settings, a model or data that did not load); a
    # combination the rules refuse is listed and skipped by design
    return 1 if any(c.status == "failed" or (c.status == "refused" and not c.refused) for c in mine) else 0


def write_table(sweep: Sweep, mine: list[Cell], shard: tuple[int, int] | None, loads: int) -> None:
    """sweep.md (or sweep-shardIofN.md): the cells' table and the report command; the table also on stdout."""
    rows = table(mine)
    report = (f"compare the cells: python run.py report {sweep.folder} --out {sweep.folder / 'report'}  "
              "(paired comparisons, seeds, plots; docs/reports.md)")
    text = "\n".join([f"# Sweep {sweep.file}", "", f"{len(mine)} cells in `{sweep.folder}`"
                      + (f" (cell shard {shard[0]}/{shard[1]})" if shard else ""), "", *rows, "", report]) + "\n"
    name = f"sweep-shard{shard[0]}of{shard[1]}.md" if shard else "sweep.md"
    try:
        write_atomic(sweep.folder / name, text)
    except RunDirError as e:
        print(f"{LABEL}: warning: {e}", file=sys.stderr)
    print("\n".join(rows))
    print(f"[{LABEL}] {sum(c.status in ('ran', 'resumed', 'complete') for c in mine)} of {len(mine)} cells complete, "
          f"{loads} model load(s); table in {sweep.folder / name}", file=sys.stderr)
    print(f"[{LABEL}] {report}", file=sys.stderr)
