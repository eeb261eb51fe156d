"""Decode step cost vs cache length: this KV state (keys and values in growing buffers written in place) against
the pre-change one (transformers' DynamicCache, which concatenates every layer's keys and values at every step),
on the same model, cache contents and tokens, interleaved in one process.

For each cache length L, one repeat = `--steps` greedy decode steps from a synthetic cache of L entries (rolled back
afterwards), timed for both states back to back; ratios are medians of the paired per-repeat ratios. The attention's
own time (inside the attention kernel, all layers) is measured in a separate pass through a timing attention
function, so that the growth of a step beyond attention can be read off:
    beyond-attention growth = (step(L) - attention(L)) / (step(256) - attention(256)).
The pre-change state is rebuilt from git (`git show REV:kv_state.py`), so this runs only in a git checkout.

    python bench/decode_step.py --lengths 256 2048 8192 --steps 16 --repeats 5 --threads 1
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import clock, machine, median, parser, setup, synthetic_state, table, write_json  # noqa: E402

from kv_state import TEXT, extend, rollback  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OLD_REV = "233d6fd"  # main before the KV state owned its buffers and masks (issue 8)


def old_kv_state(rev: str):
    """The pre-change kv_state module, imported from git under another name."""
    text = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:kv_state.py"], check=True, capture_output=True,
                          text=True).stdout
    path = Path(tempfile.mkdtemp()) / "kv_state_old.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("kv_state_old", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def old_state(old, new_state):
    from transformers import DynamicCache

    layers = [(k.clone(), v.clone()) for k, v in new_state.layer_tensors()]
    return old.KVState(DynamicCache(layers), new_state.mask.clone(), new_state.next_pos.clone(),
                       new_state.pos.clone(), new_state.kinds.clone())


def decode(module, model, state, tok: torch.Tensor, steps: int) -> torch.Tensor:
    with module.rollback(state):
        for _ in range(steps):
            tok = module.extend(model, state, input_ids=tok[:, None], want="logits", kind=TEXT).argmax(-1)
    return tok


_ATTENTION_S = [0.0]


def _timed_sdpa(module, *args, **kwargs):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    t0 = time.perf_counter()
    out = ALL_ATTENTION_FUNCTIONS["sdpa"](module, *args, **kwargs)
    _ATTENTION_S[0] += time.perf_counter() - t0
    return out


def attention_share(model, state, tok, steps: int, repeats: int) -> tuple[float, float]:
    """(median step time, median attention time per step) with every attention call timed (CPU: synchronous)."""
    from transformers import AttentionInterface

    AttentionInterface.register("bench_timed_sdpa", _timed_sdpa)
    impl = model.config._attn_implementation
    model.config._attn_implementation = "bench_timed_sdpa"
    steps_s, att_s = [], []
    try:
        for _ in range(repeats):
            _ATTENTION_S[0] = 0.0
            t0 = time.perf_counter()
            with rollback(state):
                t = tok
                for _ in range(steps):
                    t = extend(model, state, input_ids=t[:, None], want="logits", kind=TEXT).argmax(-1)
            steps_s.append((time.perf_counter() - t0) / steps)
            att_s.append(_ATTENTION_S[0] / steps)
    finally:
        model.config._attn_implementation = impl
    return median(steps_s), median(att_s)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 2048, 8192])
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--rev", default=OLD_REV, help="git revision of the pre-change kv_state.py")
    p.add_argument("--out", default="bench/results/decode_step.json")
    args = p.parse_args()
    wrapper, model, _, dev = setup(args)
    if model.config._attn_implementation != "sdpa":
        sys.exit("run with the default sdpa attention")
    old = old_kv_state(args.rev)
    tok = torch.tensor([wrapper.tokenizer.eos_token_id or 0], device=dev)
    rows, raw = [], {}
    base = None
    for length in args.lengths:
        new = synthetic_state(model, length)
        prev = old_state(old, new)
        with torch.inference_mode():
            same = torch.equal(decode(sys.modules["kv_state"], model, new, tok, 4), decode(old, model, prev, tok, 4))
            t_new, t_old = [], []
            for r in range(args.repeats):
                pair = [("new", sys.modules["kv_state"], new), ("old", old, prev)]
                for name, module, state in (pair if r % 2 == 0 else pair[::-1]):
                    t0 = clock(dev)
                    decode(module, model, state, tok, args.steps)
                    (t_new if name == "new" else t_old).append((clock(dev) - t0) / args.steps)
            step, att = attention_share(model, new, tok, args.steps, args.repeats)
        ratio = median([a / b for a, b in zip(t_new, t_old)])
        base = base or (step, att)
        growth = (step - att) / (base[0] - base[1])
        raw[length] = {"new_s": t_new, "old_s": t_old, "timed_step_s": step, "attention_s": att, "same_tokens": same}
        rows.append([length, f"{median(t_old) * 1e3:.1f}", f"{median(t_new) * 1e3:.1f}", f"{ratio:.2f}",
                     f"{att / step:.0%}", f"{step / base[0]:.2f}", f"{growth:.2f}", "yes" if same else "NO"])
    print(table(["cache entries", "old step ms", "new step ms", "new/old (paired median)", "attention share",
                 "step vs first length", "beyond-attention vs first length", "same tokens"], rows))
    write_json(args.out, {"machine": machine(dev), "args": vars(args), "raw": raw})


if __name__ == "__main__":
    main()
