"""Run bookkeeping: seeding, timing, run directories, JSONL results that survive interruption, summaries."""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import random
import subprocess
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def item_generator(seed: int, index: int, stream: str = "sample") -> torch.Generator:
    """A random stream per item and purpose, so results depend neither on batch composition nor on whether another
    purpose (say, random KV selection) drew numbers first."""
    digest = hashlib.sha256(f"{seed}:{index}:{stream}".encode()).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:7], "little"))


def now(device: torch.device | None = None) -> float:
    """A wall clock that waits for queued GPU work first, so a timed region measures the work itself."""
    if device is not None and device.type == "cuda":
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


def environment() -> dict:
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


def read_results(path: Path) -> list[dict]:
    """Records of a results.jsonl; a truncated last line (a crash mid-write) is dropped and cut from the file."""
    if not path.exists():
        return []
    records, good_bytes = [], 0
    with open(path, "rb") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
            good_bytes += len(line)
    if good_bytes != path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
    return records


class ResultsWriter:
    """Appends one JSON line per finished item and flushes it to disk at once."""

    def __init__(self, path: Path):
        self.f = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self.f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


def _mean(values: list[float]) -> float:
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
