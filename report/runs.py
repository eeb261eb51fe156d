"""Reading and grouping runs for a report: each run typed from rundir.read_run (its summary, records and its
RunConfig), groups by team composition (the model, or each model with its agents), task and data source, short
labels, compression series, and what else varies."""
from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from config import RunConfig, keep_text, series_defaults
from errors import RunError
from registry import METHODS
from rundir import RunDirError, SavedRun, is_run, read_run

# compression settings other than the keep ratio, and their defaults (a line label names only what differs)
SERIES_DEFAULTS = series_defaults()
# settings that change results but not what is measured: runs of one group that differ in them are flagged
WITHIN_GROUP = ("n", "seed", "temperature", "max_new_tokens", "prompt", "agents", "dtype", "split", "cross_model")


class ReportError(RunError):
    """A path is not a run directory, or nothing can be reported; the message says which."""


@dataclass
class Run:
    """One run directory as a report reads it: rundir's SavedRun (summary, records, typed settings) and its label."""

    saved: SavedRun
    label: str = ""

    @property
    def path(self) -> Path:
        return self.saved.path

    @property
    def summary(self) -> dict:
        return self.saved.summary or {}

    @property
    def records(self) -> list[dict]:
        return self.saved.records

    @property
    def settings(self) -> RunConfig | None:
        """The run's configuration (None when the directory has no config.json)."""
        return self.saved.settings

    def get(self, key: str, default=None):
        return self.summary.get(key, default)

    @property
    def method(self) -> str:
        return self.summary.get("method") or "?"

    @property
    def compression(self) -> dict | None:
        return self.summary.get("compression")

    @property
    def composition(self) -> str:
        """The team's composition: the model alone when one model ran every agent (a baseline, a one-model team),
        else each model with its agents (summary.json's "models"; runs written before it: the run's model)."""
        models = self.summary.get("models") or {}
        if len(models) > 1:
            return " + ".join(f"{m} ({', '.join(map(str, v.get('agents', [])))})" for m, v in models.items())
        return str(next(iter(models), None) or self.summary.get("model"))

    @property
    def group_key(self) -> tuple[str, str, str]:
        """Runs of one group are compared: one team composition, task and data source."""
        source = self.summary.get("data_source") or self.saved.config.get("data", {}).get("source") or "?"
        if source == "file":
            source += f":{self.setting('data_path')}"
        return self.composition, str(self.summary.get("task")), source

    def setting(self, key: str):
        """A setting as the run had it: the summary's value, else the typed configuration's (None if neither)."""
        if key == "dtype":
            return self.saved.config.get("dtype")
        if key == "split":
            return self.saved.config.get("data", {}).get("split")
        if key in self.summary:
            return self.summary[key]
        try:
            return self.settings.get(key) if self.settings is not None else None
        except KeyError:  # not a setting of this version
            return None


def load_run(path: Path) -> Run:
    try:  # config.json, the records (results.jsonl, then parts not merged yet; read only) and summary.json (rebuilt
        saved = read_run(path)  # as run.py writes it if the run stopped before writing one): rundir.read_run
    except RunDirError as e:
        raise ReportError(str(e)) from None
    if saved.summary is None:
        raise ReportError(f"{path}: no summary.json (nor config.json with results.jsonl); give a run directory "
                          "that run.py wrote")
    return Run(saved)


def find_runs(paths: list[str]) -> list[Run]:
    """The runs in `paths` (run directories, or folders holding them), each once: a run given twice, or given and
    inside a folder given, is one run (it would otherwise be counted twice and paired with itself)."""
    found: dict[Path, Path] = {}  # resolved -> as given, first seen first
    for p in map(Path, paths):
        if not os.path.isdir(p):  # os.path: False, not an exception, for a name too long or no permission
            raise ReportError(f"{p}: not a directory; give run directories (or folders holding them)")
        if is_run(p):
            found.setdefault(p.resolve(), p)
            continue
        inner = sorted(d for d in p.iterdir() if d.is_dir() and is_run(d))
        if not inner:
            raise ReportError(f"{p}: neither a run directory (summary.json, results.jsonl) nor a folder of them")
        for d in inner:
            found.setdefault(d.resolve(), d)
    if not found:
        raise ReportError("no runs given")
    return [load_run(p) for p in found.values()]


def find_baseline(runs: list[Run], path: str | None) -> Run | None:
    """The --baseline run: one of the runs given, else read and added to them."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_dir() or not is_run(p):
        raise ReportError(f"--baseline {p}: not a run directory (summary.json, results.jsonl)")
    for r in runs:
        if r.path.resolve() == p.resolve():
            return r
    runs.append(load_run(p))
    return runs[-1]


# --- grouping and labels -----------------------------------------------------------------------------------------

def group_runs(runs: list[Run]) -> dict[tuple, list[Run]]:
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.group_key, []).append(r)
    return groups


def group_name(i: int, key: tuple) -> str:
    model, task, source = key
    return f"G{i + 1}: {model} / {task} / {source}"


def _compression_text(c: dict | None) -> str:
    if not c:
        return "none"
    extra = [f"{c.get(k)}" for k, d in SERIES_DEFAULTS.items() if k in c and c.get(k) != d and k != "kv_min_keep"]
    return f"{c['kv_policy']} {keep_text(c['kv_keep'])}" + (f" ({', '.join(map(str, extra))})" if extra else "")


def base_label(r: Run) -> str:
    parts = [r.method]
    if r.get("prompt") not in (None, "sequential"):
        parts.append(str(r.get("prompt")))
    if r.method == "latent_mas":
        parts.append(f"m{r.get('latent_steps')}")
        if r.setting("cross_model") == "latent-map":  # a team of several models handing latents through the map
            parts.append("latent-map")
        if r.compression:
            parts.append(_compression_text(r.compression))
    return " ".join(parts)


def label_runs(runs: list[Run]) -> None:
    """Short labels: method, topology if not sequential, latent steps, latent-map, compression; made unique within a
    list."""
    for r in runs:
        r.label = base_label(r)
    seen = defaultdict(list)
    for r in runs:
        seen[r.label].append(r)
    for same in seen.values():
        if len(same) > 1:
            seeds = [r.get("seed") for r in same]
            by_seed = None not in seeds and len(set(seeds)) == len(seeds)  # runs of one setting, one per seed
            tails = distinct_tails([r.path for r in same])
            for r, tail in zip(same, tails):
                r.label += f" s{r.get('seed')}" if by_seed else f" [{tail}]"


def distinct_tails(paths: list[Path], width: int = 15) -> list[str]:
    """Short names that tell the paths apart: the last `width` characters of each folder name, or where two share
    them, the shortest tail of the path (parent/name, ...) that differs (two sweeps' cells share folder names)."""
    resolved = [p.resolve() for p in paths]
    for k in range(1, max(len(p.parts) for p in resolved) + 1):
        tails = ["/".join(p.parts[-k:]) for p in resolved]
        if k == 1:
            tails = [t[-width:] for t in tails]
        if len(set(tails)) == len(tails):
            return tails
    return [str(p) for p in resolved]


def series_key(r: Run) -> tuple:
    c = r.compression or {}
    return (c.get("kv_policy"), r.get("latent_steps"), r.get("prompt"), r.setting("agents"),
            *(c.get(k) for k in SERIES_DEFAULTS))


def series_label(key: tuple, keys: list[tuple]) -> str:
    """The policy, plus every other setting that is not the default or that varies among the group's lines."""
    names = ["kv_policy", "latent_steps", "prompt", "agents", *SERIES_DEFAULTS]
    parts = [str(key[0])]
    for i, name in enumerate(names[1:], start=1):
        varies = len({k[i] for k in keys}) > 1
        non_default = name in SERIES_DEFAULTS and key[i] != SERIES_DEFAULTS[name]
        if varies or non_default:
            parts.append(f"m{key[i]}" if name == "latent_steps" else f"{name.removeprefix('kv_')}={key[i]}")
    return " ".join(parts)


def within_group_differences(runs: list[Run]) -> dict[str, list]:
    out = {}
    for key in WITHIN_GROUP:
        values = sorted({json.dumps(r.setting(key)) for r in runs if r.setting(key) is not None})  # None: n/a
        if len(values) > 1:
            out[key] = [json.loads(v) for v in values]
    return out


def method_order(r: Run) -> tuple:
    """Baseline, text_mas, latent_mas; uncompressed first, then by policy and keep ratio."""
    order = list(METHODS)
    return (order.index(r.method) if r.method in order else len(order), r.compression is not None,
            (r.compression or {}).get("kv_policy") or "", (r.compression or {}).get("kv_keep") or 0, r.label)
