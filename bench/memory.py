"""Memory: the judger's KV bytes and the peak memory of a latent_mas run per keep ratio, against the kept-share
prediction.

Every keep ratio runs in its own child process (peak RSS only grows within a process): load the model, run the team
on the same items (one batch, greedy) with the policy at that keep ratio, and measure
- the storage the judger's cache really holds when it starts writing: the distinct storages under its key and value
  tensors (a pruned cache that was only a view of the unpruned one would show here), padding columns included;
- the prediction: the uncompressed judger's storage times the kept share (kept entries / entries with no
  compression, summed over the batch);
- peak RSS of the child over its RSS after loading the model and one forward pass (Linux VmHWM, reset there: weights
  may be mapped lazily), or on CUDA the peak allocated memory over what the model holds.

    python bench/memory.py --max_samples 8 --keeps 1.0 0.9 0.7 0.5 0.3 --policy knn-bottom
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import items_and_config, machine, median, parser, run_flags, setup, table, write_json  # noqa: E402

from compression import POLICIES, Compressor  # noqa: E402
from config import CompressionConfig  # noqa: E402
from methods.latent_mas import _encode_team, _think  # noqa: E402


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (peak RSS needs Linux)")


def _reset_peak_rss() -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    Path("/proc/self/clear_refs").write_text("5")


def storage_bytes(state) -> int:
    """Bytes of the distinct storages under the cache's keys and values (views of one storage count once)."""
    seen: dict[int, int] = {}
    for k, v in state.layer_tensors():
        for t in (k, v):
            s = t.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def measure(wrapper, items, cfg, max_new_tokens: int) -> dict:
    """One latent_mas team run on `items` (one batch) with `cfg` (its compressor, if any): the judger's cache when it
    starts writing (held bytes, storage, entries), the final cache, and the peak over what the loaded model holds
    (CUDA: allocated memory; CPU: the process's RSS, Linux)."""
    model, tok, dev = wrapper.model, wrapper.tokenizer, wrapper.device
    team = cfg.get_team()
    with torch.inference_mode():  # touch every weight first: loading may map the weights lazily
        model(input_ids=torch.tensor([[tok.eos_token_id or 0] * 4], device=dev))
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    else:
        base = _status_kib("VmRSS") * 1024
        _reset_peak_rss()
    with torch.inference_mode():
        encs = _encode_team(wrapper, items, cfg, team)
        state, _ = _think(wrapper, items, cfg, team, encs, cfg.compressor)
        out = {"storage_bytes": storage_bytes(state), "tensor_bytes": state.nbytes(),
               "judger_tokens": sum(state.valid_tokens()), "columns": state.length, "rows": state.batch_size}
        wrapper.generate(state, encs[-1], max_new_tokens, temperature=0.0)
        out["final_storage_bytes"] = storage_bytes(state)
    out["base_bytes"] = base
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        out["peak_over_base_bytes"] = torch.cuda.max_memory_allocated(dev) - base
    else:
        out["peak_over_base_bytes"] = _status_kib("VmHWM") * 1024 - base
    out["device"] = str(dev)
    return out


def against_prediction(full: dict, m: dict, peak: float | None = None) -> dict:
    """`m` (a measure at some keep ratio) against the prediction from `full` (the same run uncompressed): kept share,
    predicted bytes, relative error, and the peak over (loaded model + final cache)."""
    share = m["judger_tokens"] / full["judger_tokens"]
    predicted = full["tensor_bytes"] * share
    peak = m["peak_over_base_bytes"] if peak is None else peak
    return {"kept_share": share, "predicted_bytes": predicted, "error": m["tensor_bytes"] / predicted - 1,
            "peak_over_model_and_final_cache": (m["base_bytes"] + peak) / (m["base_bytes"] + m["final_storage_bytes"])}


def child(args) -> dict:
    wrapper, model, tok, dev = setup(args)
    items, _, config = items_and_config(args)
    comp = None if args.keep >= 1 else Compressor(CompressionConfig(kv_policy=args.policy, kv_keep=args.keep,
                                                                     kv_scope=args.scope))
    return {"keep": args.keep, **measure(wrapper, items, config(compressor=comp), args.max_new_tokens)}


def main() -> None:
    p = parser(__doc__)
    run_flags(p, max_samples=8, max_new_tokens=32)
    p.add_argument("--keeps", type=float, nargs="+", default=[1.0, 0.9, 0.7, 0.5, 0.3])
    p.add_argument("--policy", default="knn-bottom", choices=list(POLICIES))
    p.add_argument("--scope", default="shared")
    p.add_argument("--out", default="bench/results/memory.json")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--keep", type=float, default=1.0, help=argparse.SUPPRESS)
    p.set_defaults(repeats=1)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    if any(not 0 < k <= 1 for k in args.keeps):
        p.error("--keeps: every ratio must be in (0, 1]")
    keeps = sorted(set(args.keeps) | {1.0}, reverse=True)  # 1.0 is the reference of the prediction
    flags = [f"--{name}={getattr(args, name)}" for name in ("model_name", "device", "dtype", "threads", "seed", "task",
                                                             "max_samples", "policy", "scope", "max_new_tokens",
                                                             "latent_steps")]
    t_start = time.time()
    runs: dict[float, list[dict]] = {k: [] for k in keeps}
    for r in range(args.repeats):
        for k in (keeps if r % 2 == 0 else keeps[::-1]):
            cmd = [sys.executable, __file__, *flags, "--child", "--keep", str(k)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"child for keep {k} failed:\n{proc.stderr[-2000:]}")
            runs[k].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"repeat {r} keep {k}: done ({time.time() - t_start:.0f}s so far)", file=sys.stderr, flush=True)

    full = runs[1.0][0]
    rows, results = [], {}
    for k in keeps:
        m = runs[k][0]  # the cache sizes are deterministic (greedy, same items); peaks are the noisy part
        peak = median([x["peak_over_base_bytes"] for x in runs[k]])
        # peak vs what must be held anyway: the loaded model (RSS after loading, or CUDA allocated) + the final cache
        cmp = against_prediction(full, m, peak)
        share, predicted, err, over = (cmp[x] for x in ("kept_share", "predicted_bytes", "error",
                                                         "peak_over_model_and_final_cache"))
        results[k] = {**m, **cmp, "peak_over_base_median_bytes": peak,
                      "peaks": [x["peak_over_base_bytes"] for x in runs[k]]}
        rows.append([f"{k:g}", m["judger_tokens"], m["columns"], f"{share:.3f}", f"{m['tensor_bytes'] / 2**20:.2f}",
                     f"{predicted / 2**20:.2f}", f"{100 * err:+.2f}%", f"{m['storage_bytes'] / 2**20:.2f}",
                     f"{m['final_storage_bytes'] / 2**20:.2f}", f"{peak / 2**20:.1f}", f"{over:.3f}"])
    dev = torch.device(full["device"])
    info_m = machine(dev)
    peak_name = "CUDA peak over model MiB" if dev.type == "cuda" else "peak RSS over loaded model MiB"
    print(f"\n{args.model_name}, latent_mas on {args.task} (first {args.max_samples} items as one batch), greedy, "
          f"policy {args.policy} scope {args.scope} at every hand-off, latent_steps {args.latent_steps}, "
          f"max_new_tokens {args.max_new_tokens}, {args.repeats} repeat(s), device {dev}, "
          f"{info_m.get('cpu', info_m['processor'])}")
    print(table(["keep", "judger entries (all rows)", "cache columns", "kept share", "judger KV MiB (held entries)",
                 "predicted MiB", "held vs prediction", "judger KV storage MiB (with decode room)",
                 "final cache storage MiB", peak_name, "peak / (loaded model + final cache)"], rows))
    write_json(args.out, {"args": vars(args), "machine": info_m, "results": results, "wall_s": time.time() - t_start})


if __name__ == "__main__":
    main()
