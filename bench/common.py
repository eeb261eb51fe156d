"""What the bench scripts share: flags for model and threads, loading, synthetic caches, medians, tables, JSON."""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kv_state import LATENT, PROMPT, KVState  # noqa: E402
from registry import DEFAULT_MODEL  # noqa: E402


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(doc.splitlines()[1:]))
    p.add_argument("--model_name", default=DEFAULT_MODEL)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (the median is reported)")
    p.add_argument("--seed", type=int, default=0)
    return p


def run_flags(p: argparse.ArgumentParser, max_samples: int, max_new_tokens: int) -> None:
    """The flags of the scripts that run a method on real items: task, item count, decode length, latent steps."""
    from registry import TASKS

    p.add_argument("--task", default="gsm8k", choices=list(TASKS))
    p.add_argument("--max_samples", type=int, default=max_samples)
    p.add_argument("--max_new_tokens", type=int, default=max_new_tokens)
    p.add_argument("--latent_steps", type=int, default=10)


def items_and_config(args):
    """(items, data info, greedy config factory): `config(**extra)` gives the MethodConfig every run of the script
    shares (greedy, the script's seed), plus `extra` (say, a compressor)."""
    from data import load_task
    from methods import MethodConfig
    from registry import TASKS

    items, info = load_task(args.task, max_samples=args.max_samples)

    def config(**extra):
        return MethodConfig(answer_type=TASKS[args.task].answer_type, max_new_tokens=args.max_new_tokens,
                            temperature=0.0, top_p=1.0, seed=args.seed, latent_steps=args.latent_steps, **extra)

    return items, info, config


def setup(args):
    """Threads, seed, model. Returns (wrapper, model, tokenizer, device)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from models import ModelWrapper, load_model

    model, tok, dev = load_model(args.model_name, args.device, args.dtype)
    wrapper = ModelWrapper(model, tok, dev, realign=getattr(args, "realign", False))
    return wrapper, model, tok, dev


def machine(device) -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "device": str(device), "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def clock(device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


@torch.no_grad()
def synthetic_state(model, length: int, batch: int = 1, block: int = 0, latents: int = 0) -> KVState:
    """A KV state of `length` real entries per row with random keys and values in the model's cache layout (what
    a step costs depends on the cache's length, not on its content). With `block` > 0 the entries are laid out as
    agents' blocks of `block` entries whose last `latents` entries are latent steps."""
    cfg = model.config
    n_kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    dev, dtype = model.device, model.dtype
    layers = [(torch.randn(batch, n_kv, length, d, device=dev, dtype=dtype),
               torch.randn(batch, n_kv, length, d, device=dev, dtype=dtype)) for _ in range(cfg.num_hidden_layers)]
    pos = torch.arange(length, device=dev)[None, None, None, :].expand(1, batch, 1, length).clone()
    kinds = torch.full_like(pos, PROMPT)
    if block and latents:
        kinds[..., (torch.arange(length, device=dev) % block) >= block - latents] = LATENT
    return KVState.from_tensors(layers, torch.ones(batch, length, dtype=torch.long, device=dev),
                   torch.full((batch,), length, dtype=torch.long, device=dev), pos, kinds)


def prompt_of(wrapper, tokens: int, batch: int = 1):
    """A rendered chat prompt of about `tokens` tokens (a question repeated), as an agent would send."""
    body = "Plan the steps to solve this problem: a shop sells 17 apples each day for 3 dollars each. "
    text = body
    while wrapper.count_tokens(wrapper.render(text)) < tokens:
        text += body
    return wrapper.encode([wrapper.render(text)] * batch)


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str, payload: dict) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, default=str))
    print(f"[bench] wrote {out}", file=sys.stderr)


def save(args, info, dev, summary, rows, t_start) -> None:
    """A sweep bench's table and rows as JSON at args.out, with the data, machine and wall time."""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "data": info, "machine": machine(dev), "table": summary,
                               "rows": rows, "wall_s": time.time() - t_start}, indent=2))
