"""Compression sweep: policy x keep ratio on the same items, against the uncompressed team, in one process.

Per batch of items the uncompressed latent_mas team runs once (the reference: its greedy judger output and
next-token distributions); then every setting runs on the same batch and is scored against it (fidelity), so all
settings see the same machine noise. Greedy decoding; batched == unbatched is tested, so --batch only sets speed.

    python bench/compression_sweep.py --max_samples 20 --max_new_tokens 128 --out bench/results/sweep.json
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import items_and_config, parser, run_flags, save, setup, table  # noqa: E402

from compression import POLICIES, Compressor  # noqa: E402
from config import CompressionConfig  # noqa: E402
from methods import latent_mas  # noqa: E402
from utils import set_seed, wilson_ci  # noqa: E402


def settings(args) -> list[tuple[str, str, float | None, str]]:
    """(label, policy, keep, positions), keep ratio by keep ratio (so an interrupted sweep still covers every
    policy at the first ratios); policy "none" is the uncompressed run."""
    out = [("none", "none", None, "original")]
    for k in args.keeps:
        out += [(f"{p} k{k:g}", p, k, "original") for p in args.policies]
        if k in args.shift_keeps:
            out.append((f"knn-bottom k{k:g} shift", "knn-bottom", k, "shift"))
    return out


def summarize(runs, rows) -> dict:
    out = {}
    for label, policy, keep, positions in runs:
        r = rows[label]
        if not r:
            continue
        correct = sum(x["correct"] for x in r)
        out[label] = {"policy": policy, "keep": keep, "positions": positions, "n": len(r), "correct": correct,
                      "ci95": wilson_ci(correct, len(r)),
                      **{f"{k}_mean": statistics.mean(x[k] for x in r)
                         for k in ("kv_bytes_judger", "kv_tokens_judger", "kept_share", "time_s", "compress_s",
                                   "agreement", "kl", "output_match")}}
    return out


def main() -> None:
    p = parser(__doc__)
    run_flags(p, max_samples=20, max_new_tokens=128)
    p.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    p.add_argument("--keeps", nargs="+", type=float, default=[0.5, 0.7, 0.9])
    p.add_argument("--shift_keeps", nargs="*", type=float, default=[0.5, 0.7, 0.9],
                   help="knn-bottom with the seed's shift positions, to compare with original")
    p.add_argument("--scope", default="shared")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--out", default="bench/results/compression_sweep.json")
    p.set_defaults(seed=42)
    args = p.parse_args()
    wrapper, model, tok, dev = setup(args)
    items, info, config = items_and_config(args)
    set_seed(args.seed)
    runs = settings(args)
    rows: dict[str, list[dict]] = {label: [] for label, *_ in runs}
    t_start = time.time()
    for start in range(0, len(items), args.batch):
        batch = items[start:start + args.batch]
        with torch.inference_mode():
            ref = latent_mas.reference(wrapper, batch, config())
            for label, policy, keep, positions in runs:
                comp = None if policy == "none" else Compressor(CompressionConfig(
                    kv_policy=policy, kv_keep=keep, kv_scope=args.scope, kv_positions=positions))
                t_set = time.time()
                for r in latent_mas.run_batch(wrapper, batch, config(compressor=comp), ref=ref):
                    judger = r["agents"][-1]
                    rows[label].append({"index": r["index"], "correct": r["correct"], "time_s": r["time_s"],
                                        "kv_bytes_judger": judger["kv_bytes_in"],
                                        "kv_tokens_judger": judger["kv_tokens_in"],
                                        "kept_share": r.get("kv_kept_share", 1.0),
                                        "compress_s": sum(a.get("compress_time_s", 0) for a in r["agents"]),
                                        "agreement": r["fidelity"]["agreement"], "kl": r["fidelity"]["kl"],
                                        "output_match": r["fidelity"]["output_match"]})
                print(f"  {label}: {time.time() - t_set:.0f}s", file=sys.stderr, flush=True)
                if start == 0:  # after each setting of the first batch, so an interrupted sweep keeps its results
                    save(args, info, dev, summarize(runs, rows), rows, t_start)
        print(f"items {start}-{start + len(batch) - 1} done, {time.time() - t_start:.0f}s", file=sys.stderr,
              flush=True)

    summary = summarize(runs, rows)
    print(f"\n{args.model_name} on {args.task} (first {len(items)}, {info['source']}), latent_mas, greedy, "
          f"max_new_tokens {args.max_new_tokens}, latent_steps {args.latent_steps}, scope {args.scope}, "
          f"device {dev}, batch {args.batch}")
    out = [[label, f"{t['kv_bytes_judger_mean'] / 2**20:.2f}", f"{t['kept_share_mean']:.3f}", f"{t['time_s_mean']:.2f}",
            f"{t['compress_s_mean']:.3f}", f"{t['agreement_mean']:.3f}", f"{t['kl_mean']:.3f}",
            f"{t['output_match_mean']:.2f}", f"{t['correct']}/{t['n']} [{t['ci95'][0]:.2f}, {t['ci95'][1]:.2f}]"]
           for label, t in summary.items()]
    print(table(["setting", "judger KV MiB", "kept share", "time/item s", "compress s/item", "agreement", "KL",
                    "same output", "accuracy (95% CI)"], out))
    save(args, info, dev, summary, rows, t_start)


if __name__ == "__main__":
    main()
