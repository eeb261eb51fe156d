"""Compression overhead: time to score and prune a hand-off's cache vs the time of the agent it serves, over cache
lengths, per policy and scope, in one process with repeats and medians.

The cache is synthetic (random keys and values in the model's layout, laid out as agents' blocks that end in latent
steps): scoring and pruning cost depends on its shape, not its content. The next prompt is a real rendered prompt of
--prompt_tokens tokens. "agent" is what the served agent does on the uncompressed cache: prefill that prompt and run
--latent_steps latent steps (a latent agent; a judger, which also decodes, takes longer, so this is the harder
comparison). Compression runs on a fresh copy of the cache each repeat (the copy is not timed). The share of the
agent is the median of paired shares (compression and agent timed in the same repeat), robust to machine drift.

    python bench/compression_overhead.py --lengths 256 1024 4096 8192 --repeats 3 --threads 1
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import clock, machine, median, parser, prompt_of, setup, synthetic_state, table, write_json  # noqa: E402

from compression import POLICIES, Compressor  # noqa: E402
from config import CompressionConfig  # noqa: E402
from registry import SCOPES  # noqa: E402

ATTENTION_KNN = "knn-top/attention"  # the knn policy with --kv_query attention (a scoring pass over the prompt)


def measure(wrapper, args, enc, length: int, warm_up: bool) -> tuple[list[float], dict[tuple, list[float]]]:
    """Agent times and compression times (s) per (policy, scope) on a synthetic cache of `length` entries."""
    dev = wrapper.device
    block = max(args.prompt_tokens + args.latent_steps, 1)
    base = synthetic_state(wrapper.model, length, 1, block=block, latents=args.latent_steps)
    comps = {(pol, scope): Compressor(CompressionConfig(
                kv_policy=pol.split("/")[0], kv_keep=args.keep, kv_scope=scope, kv_min_keep=5,
                kv_query="attention" if pol == ATTENTION_KNN else "embed-mean"))
             for pol in args.policies for scope in args.scopes}
    times: dict[tuple, list[float]] = {key: [] for key in comps}
    agent: list[float] = []

    def run_agent():
        s = base.clone()
        t0 = clock(dev)
        wrapper.prefill_and_think(s, enc, args.latent_steps)
        agent.append(clock(dev) - t0)

    def run_comp(key):
        s = base.clone()
        gens = [torch.Generator().manual_seed(args.seed)]
        t0 = clock(dev)
        comps[key](wrapper, s, enc, gens)
        times[key].append(clock(dev) - t0)
        assert s.length < length, f"{key} did not prune"

    if warm_up:
        run_agent()
        for key in comps:
            run_comp(key)
            times[key].clear()
        agent.clear()
    for r in range(args.repeats):
        run_agent()
        for key in (list(comps) if r % 2 == 0 else list(comps)[::-1]):
            run_comp(key)
    return agent, times


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096, 8192])
    p.add_argument("--policies", nargs="+", default=[*POLICIES, ATTENTION_KNN],
                   choices=[*POLICIES, ATTENTION_KNN])
    p.add_argument("--scopes", nargs="+", default=list(SCOPES), choices=list(SCOPES))
    p.add_argument("--keep", type=float, default=0.6)
    p.add_argument("--prompt_tokens", type=int, default=128)
    p.add_argument("--latent_steps", type=int, default=10)
    p.add_argument("--out", default="bench/results/compression_overhead.json")
    p.set_defaults(repeats=3)
    args = p.parse_args()
    wrapper, model, tok, dev = setup(args)
    enc = prompt_of(wrapper, args.prompt_tokens)
    t_start = time.time()
    results, rows = {}, []
    with torch.inference_mode():
        for length in args.lengths:
            agent, times = measure(wrapper, args, enc, length, warm_up=length == args.lengths[0])
            a = median(agent)
            results[length] = {"agent_median_s": a, "agent_s": agent, "policies": {}}
            for (pol, scope), ts in times.items():
                results[length]["policies"][f"{pol}|{scope}"] = {
                    "median_s": median(ts), "samples_s": ts,
                    "share_of_agent": median([c / x for c, x in zip(ts, agent)])}
            print(f"cache {length}: agent {a:.3f}s, done in {time.time() - t_start:.0f}s", file=sys.stderr,
                  flush=True)

    info = machine(dev)
    header = ["policy", "scope"] + [f"L={n}: ms (% of agent)" for n in args.lengths]
    for pol in args.policies:
        for scope in args.scopes:
            cells = []
            for n in args.lengths:
                r = results[n]["policies"][f"{pol}|{scope}"]
                cells.append(f"{r['median_s'] * 1e3:.1f} ({100 * r['share_of_agent']:.1f}%)")
            rows.append([pol, scope] + cells)
    rows.append(["agent (prefill + latent steps), ms", ""] + [f"{results[n]['agent_median_s'] * 1e3:.0f}"
                                                              for n in args.lengths])
    print(f"\n{args.model_name}, keep {args.keep}, next prompt {enc.ids.shape[1]} tokens, agent = prefill + "
          f"{args.latent_steps} latent steps, {args.repeats} repeats (median; shares: median of paired shares), "
          f"device {dev}, {info['torch_threads']} torch thread(s), {info.get('cpu', info['processor'])}, "
          f"load average {info['load_average']}")
    print(table(header, rows))
    write_json(args.out, {"args": vars(args), "machine": info, "prompt_tokens": enc.ids.shape[1],
                          "results": results, "wall_s": time.time() - t_start})


if __name__ == "__main__":
    main()
