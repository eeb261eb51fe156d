"""Latent step vs decode step: one latent step of ModelWrapper.prefill_and_think against one per-token step of
ModelWrapper.generate, on the same cache length, in one process, interleaved, with repeats and medians.

A latent step is realign(h) -> one forward pass over the vector, keeping only the last hidden state (no LM head);
a decode step is one forward pass over a token id with the LM head on the last position, then argmax. Two views:
  step:    exactly one step of each on a cache of length L (rolled back after every repeat);
  wrapper: the real calls, prefill_and_think(1-token prompt, N steps) against generate(1-token prompt, N + 1 tokens,
           stop tokens off), both N + 1 one-token passes on a cache growing from L, divided by N + 1.
The LM head alone (the final norm's output times the output embedding) is timed too: it is what a latent step saves.
Ratios are medians of paired ratios (latent and decode timed back to back in the same repeat), which cancels most
of the drift of a shared machine; medians of the times themselves are shown as well.

    python bench/latent_step.py --lengths 256 1024 4096 --repeats 30 --wrapper_repeats 5 --steps 8 --threads 1
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import clock, machine, median, parser, prompt_of, setup, synthetic_state, table, write_json  # noqa: E402

from kv_state import LATENT, TEXT, extend, rollback  # noqa: E402


def measure(wrapper, args, one, length: int) -> dict[str, list[float]]:
    """Times (s) of each step kind on a synthetic cache of `length` entries, paired repeat by repeat."""
    model, dev = wrapper.model, wrapper.device
    state = synthetic_state(model, length, args.batch)
    with rollback(state):  # a real last hidden state to start from
        h = extend(model, state, input_ids=one.ids, want="hidden")
    stop_ids = wrapper.stop_ids

    def latent_step():
        with rollback(state):
            v = wrapper.realigner(h)
            extend(model, state, inputs_embeds=v[:, None, :], want="hidden", kind=LATENT)

    def decode_step():
        with rollback(state):
            extend(model, state, input_ids=one.ids, want="logits", kind=TEXT).argmax(dim=-1)

    def lm_head():
        model.get_output_embeddings()(h[:, None, :]).argmax(dim=-1)

    def think():
        with rollback(state):
            wrapper.prefill_and_think(state, one, args.steps)

    def generate():
        wrapper.stop_ids = set()  # no early stop: exactly N + 1 tokens
        try:
            with rollback(state):
                wrapper.generate(state, one, args.steps + 1, temperature=0.0)
        finally:
            wrapper.stop_ids = stop_ids

    fns = {"latent": latent_step, "decode": decode_step, "lm_head": lm_head, "think": think, "generate": generate}
    for fn in fns.values():  # warm-up
        fn()
    t = {name: [] for name in fns}
    for names, repeats in ((("latent", "decode", "lm_head"), args.repeats),
                           (("think", "generate"), args.wrapper_repeats)):
        for r in range(repeats):
            for name in (names if r % 2 == 0 else names[::-1]):  # alternate who goes first
                t0 = clock(dev)
                fns[name]()
                t[name].append(clock(dev) - t0)
    return t


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=8, help="N for the wrapper view")
    p.add_argument("--wrapper_repeats", type=int, default=5, help="repeats of the (slower) wrapper view")
    p.add_argument("--realign", action="store_true", help="use the ridge realignment matrix (else norm rescale)")
    p.add_argument("--out", default="bench/results/latent_step.json")
    p.set_defaults(repeats=30)
    args = p.parse_args()
    wrapper, model, tok, dev = setup(args)
    one = prompt_of(wrapper, 1, args.batch)
    one.ids, one.mask = one.ids[:, -1:], one.mask[:, -1:]  # a single token: the assistant header's last one
    t_start = time.time()
    rows, out = [], {}
    with torch.inference_mode():
        for length in args.lengths:
            t = measure(wrapper, args, one, length)
            m = {k: median(v) for k, v in t.items()}
            per_step = {"think": m["think"] / (args.steps + 1), "generate": m["generate"] / (args.steps + 1)}
            out[length] = {"median_s": m, "per_step_s": per_step, "samples_s": t,
                           "ratio_step": median([a / b for a, b in zip(t["latent"], t["decode"])]),
                           "ratio_wrapper": median([a / b for a, b in zip(t["think"], t["generate"])]),
                           "lm_head_share_of_decode": median([a / b for a, b in zip(t["lm_head"], t["decode"])])}
            r = out[length]
            rows.append([length, f"{m['latent'] * 1e3:.1f}", f"{m['decode'] * 1e3:.1f}", f"{r['ratio_step']:.2f}",
                         f"{m['lm_head'] * 1e3:.1f} ({100 * r['lm_head_share_of_decode']:.0f}%)",
                         f"{per_step['think'] * 1e3:.1f}", f"{per_step['generate'] * 1e3:.1f}",
                         f"{r['ratio_wrapper']:.2f}"])
            print(f"cache {length}: latent/decode {r['ratio_step']:.2f} (step), {r['ratio_wrapper']:.2f} (wrapper)",
                  file=sys.stderr, flush=True)
    info = machine(dev)
    print(f"\n{args.model_name}, batch {args.batch}, {args.repeats} repeats ({args.wrapper_repeats} for the wrapper "
          f"view, N={args.steps}), medians; ratios are medians of paired ratios; device {dev}, "
          f"{info['torch_threads']} torch thread(s), {info.get('cpu', info['processor'])}, "
          f"load average {info['load_average']}")
    print(table(["cache length", "latent step ms", "decode step ms", "latent/decode", "LM head ms (of decode)",
                 "think ms/step (wrapper)", "generate ms/token (wrapper)", "latent/decode (wrapper)"], rows))
    write_json(args.out, {"args": vars(args), "machine": info, "results": out, "wall_s": time.time() - t_start})


if __name__ == "__main__":
    main()
