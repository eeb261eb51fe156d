"""Hand-off overhead of the field's methods vs one decode step, over cache lengths, in one process (medians of paired
repeats): a decode step on the full-precision cache, the same step on an int8 / int4 cache (every step dequantizes
the held codes: the per-step cost of quantized storage), quantizing the cache at a hand-off (once per hand-off), and
KVComm's layer selection (a scoring pass of the next prompt, then the per-layer drop).

The cache is synthetic (random keys and values in the model's layout; cost depends on shape, not content); the next
prompt is a rendered prompt of --prompt_tokens tokens. Every operation runs on a fresh copy (the copy is not timed).

    python bench/handoff_overhead.py --lengths 512 2048 8192 --repeats 5 --threads 1
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import clock, machine, median, parser, prompt_of, setup, synthetic_state, table, write_json  # noqa: E402

from compression import Compressor  # noqa: E402
from config import CompressionConfig  # noqa: E402
from kv_state import TEXT, extend, rollback  # noqa: E402


def measure(wrapper, args, enc, length: int) -> dict[str, list[float]]:
    dev = wrapper.device
    base = synthetic_state(wrapper.model, length, 1)
    tok = torch.tensor([[wrapper.tokenizer.eos_token_id or 0]], device=dev)
    quantized = {bits: base.clone() for bits in (8, 4)}
    for bits, s in quantized.items():
        s.quantize(bits, args.group)
    kvcomm = Compressor(CompressionConfig(kv_policy="kvcomm", kv_keep=0.5))
    times: dict[str, list[float]] = {k: [] for k in ("decode fp", "decode int8", "decode int4", "quantize int8",
                                                     "quantize int4", "kvcomm select")}

    def step(state, key):
        with rollback(state):
            t0 = clock(dev)
            extend(wrapper.model, state, input_ids=tok, want="logits", kind=TEXT)
            times[key].append(clock(dev) - t0)

    def quantize(bits):
        s = base.clone()
        t0 = clock(dev)
        s.quantize(bits, args.group)
        times[f"quantize int{bits}"].append(clock(dev) - t0)

    def select():
        s = base.clone()
        t0 = clock(dev)
        kvcomm.select_layers(wrapper, s, enc, [torch.Generator().manual_seed(0)])
        times["kvcomm select"].append(clock(dev) - t0)

    for r in range(args.repeats + 1):  # the first round warms up and is dropped
        step(base, "decode fp")
        step(quantized[8], "decode int8")
        step(quantized[4], "decode int4")
        quantize(8)
        quantize(4)
        select()
        if r == 0:
            for v in times.values():
                v.clear()
    return times


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192])
    p.add_argument("--prompt_tokens", type=int, default=128)
    p.add_argument("--group", type=int, default=32)
    p.add_argument("--out", default="bench/results/handoff_overhead.json")
    args = p.parse_args()
    wrapper, model, tok, dev = setup(args)
    enc = prompt_of(wrapper, args.prompt_tokens)
    rows, results = [], {}
    for length in args.lengths:
        with torch.inference_mode():
            t = measure(wrapper, args, enc, length)
        m = {k: median(v) for k, v in t.items()}
        results[length] = m
        step = m["decode fp"]
        rows.append([length, f"{step * 1e3:.1f}", f"{m['decode int8'] / step:.2f}", f"{m['decode int4'] / step:.2f}",
                     f"{m['quantize int8'] / step:.2f}", f"{m['quantize int4'] / step:.2f}",
                     f"{m['kvcomm select'] / step:.1f}"])
        print(f"length {length} done", file=sys.stderr, flush=True)
    print(f"\n{args.model_name}, {dev}, {model.dtype}, threads {args.threads or torch.get_num_threads()}, group "
          f"{args.group}, next prompt {enc.ids.shape[1]} tokens, medians of {args.repeats}; columns after the first "
          "two "
          "are multiples of one fp decode step")
    print(table(["cache entries", "decode step ms (fp)", "step int8", "step int4", "quantize int8", "quantize int4",
                 "kvcomm select"], rows))
    write_json(args.out, {"args": vars(args), "machine": machine(dev), "medians_s": results})


if __name__ == "__main__":
    main()
