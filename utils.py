"""Small helpers every part uses: seeding, a random stream per item, a clock that waits for the GPU, the Wilson
interval, and the environment a run records. torch and numpy are imported where they are used.

The run directory and its files (results, config.json, summary.json) live in rundir.py."""
from __future__ import annotations

import hashlib
import math
import platform
import random
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


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

