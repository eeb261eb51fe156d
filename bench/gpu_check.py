"""GPU node check: the harness's invariants on this device, then what a step, a batch and the cache cost here.

Builds a randomly initialised model from a real configuration (Qwen3-4B's shape by default, `--config_json` for
another) with the embedded model's tokenizer: nothing is downloaded. Rows of the embedding and LM head beyond the
tokenizer's vocabulary are zeroed after the model is wrapped, so greedy decoding stays on ids the tokenizer can
write while the LM head keeps its real shape and cost; the LM head is untied from the embedding (a random tied
model echoes its last input token, so every output would be that token and batching could not show). Every check
goes through the project's own code (methods/latent_mas, kv_state, compression, architecture, bench/latent_step.py
and bench/memory.py).

Invariants (JSON `invariants`, name -> true/false):
  fp32, TF32 off (the tests' invariants; bf16 rounding differs with the batch's shape, which says nothing of the
  harness): batched == one by one through latent steps and kNN pruning; --compile gives the same outputs;
  bf16: keep-everything compression is bit-identical; fidelity is 1.0 at keep 1.0; the masks are bf16 with finite
  outputs on padding rows and a padded row is as close to its unpadded self as bf16 allows (far closer than with
  the padding left visible); the per-layer attention hook applies each layer's mask; KV bytes match the shape.
Timings (JSON `timings`, bf16): decode step vs cache length, latent step vs decode step, items/s per batch size,
compile off/on, and the judger's cache and peak memory against bench/memory.py's prediction.

    python bench/gpu_check.py                            # on a GPU node: about 5-8 min, JSON + Markdown
    python bench/gpu_check.py --config_json my_model/config.json --out bench/results/gpu_check_mine.json
    python bench/gpu_check.py --tiny                     # the same code on CPU with a tiny configuration
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import clock, machine, median, synthetic_state, table, write_json  # noqa: E402

import architecture  # noqa: E402
import kv_state  # noqa: E402
from compression import Compressor  # noqa: E402
from config import CompressionConfig  # noqa: E402
from data import Item  # noqa: E402
from kv_state import TEXT, KVState, attention_masks, extend, rollback  # noqa: E402
from methods import MethodConfig, get_method  # noqa: E402
from registry import DEFAULT_MODEL  # noqa: E402

# Qwen3-4B's config.json (the shape; the weights are random)
QWEN3_4B = {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "vocab_size": 151936, "hidden_size": 2560,
            "intermediate_size": 9728, "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
            "head_dim": 128, "hidden_act": "silu", "max_position_embeddings": 40960, "rms_norm_eps": 1e-6,
            "rope_theta": 1000000, "rope_scaling": None, "attention_bias": False, "attention_dropout": 0.0,
            "use_sliding_window": False, "sliding_window": None, "max_window_layers": 36,
            "tie_word_embeddings": True, "initializer_range": 0.02}
TINY = dict(QWEN3_4B, vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_window_layers=4)

# (GPU, --tiny): cache lengths, latent-step lengths, batch sizes, items, new tokens, latent steps, repeats
SIZES = {"gpu": dict(lengths=[256, 1024, 4096, 16384], latent_lengths=[1024, 4096], batch_sizes=[1, 8, 32],
                     items=32, bs1_items=8, max_new_tokens=32, latent_steps=10, repeats=5, steps=16,
                     compile_length=1024, compile_backend="inductor", budget_s=480),
         "tiny": dict(lengths=[64, 256, 1024], latent_lengths=[256], batch_sizes=[1, 4, 8], items=8, bs1_items=4,
                      max_new_tokens=8, latent_steps=3, repeats=3, steps=4, compile_length=256,
                      compile_backend="eager", budget_s=60)}
QUESTIONS = ["How many apples are left if each day the team sells 3 of 17?", "What is the total?",
             "If the market sells eggs for 2 dollars each and she sells 9 eggs each day, how many dollars is that?"]


def items(n: int) -> list[Item]:
    """n questions of different lengths (so batches are left-padded), the first three the tests' own."""
    extra = [f"A shop has {7 * i + 3} boxes with {i + 2} oranges each" + ", and then sells some" * (i % 5) +
             ". How many oranges are there?" for i in range(max(n - 3, 0))]
    return [Item(index=i, question=q, gold="1", meta={}) for i, q in enumerate((QUESTIONS + extra)[:n])]


def method_config(**kw) -> MethodConfig:
    base = dict(answer_type="number", max_new_tokens=8, temperature=0.0, top_p=1.0, seed=0, latent_steps=3)
    return MethodConfig(**{**base, **kw})


def build(config: dict, device: torch.device, dtype: torch.dtype):
    """(wrapper, model): a random model of `config` on `device` with the embedded model's tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from models import ModelWrapper, embedded_tokenizer, ready

    tok = embedded_tokenizer(DEFAULT_MODEL)
    settings = {k: v for k, v in config.items() if k not in ("model_type", "architectures", "torch_dtype", "dtype")}
    settings.update(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                    tie_word_embeddings=False)  # see the module's docstring
    cfg = AutoConfig.for_model(config["model_type"], **settings)
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: a 4B model initialised on the CPU takes minutes
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa")
    ready(model, tok, f"random {config['model_type']}")
    wrapper = ModelWrapper(model, tok, device)  # the latents' target norm comes from the whole random embedding
    with torch.no_grad():
        for emb in {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings())}.values():
            emb.weight[len(tok):] = 0  # logit 0 there, below the best real token's: greedy stays in the tokenizer
    return wrapper, model


def _tokens(records: list[dict]) -> list:
    """What batching must not change: outputs, generated tokens, and each agent's cache entries."""
    return [(r["output"], r["generated_tokens"], [(a["kv_tokens_in"], a["kv_tokens_out"]) for a in r["agents"]])
            for r in records]


# --- invariants -------------------------------------------------------------------------------------------------

def check_batched_equals_single(wrapper, details: dict) -> bool:
    comp = Compressor(CompressionConfig(kv_policy="knn-top", kv_keep=0.6, kv_scope="shared", kv_min_keep=2))
    cfg = method_config(compressor=comp, fidelity=True)  # the judger's KL to the uncompressed team: logits, not ids
    run, its = get_method("latent_mas"), items(3)
    batched = run(wrapper, its, cfg)
    single = [run(wrapper, [it], cfg)[0] for it in its]
    details["batched_equals_single"] = {"outputs": [r["output"] for r in batched],
                                        "kept_share": [r["kv_kept_share"] for r in batched],
                                        "prompt_tokens": [r["agents"][0]["prompt_tokens"] for r in single]}
    padded = len({r["agents"][0]["prompt_tokens"] for r in single}) > 1
    pruned = all(r["kv_kept_share"] < 1 for r in batched)
    kl = [(b["fidelity"]["kl"], s["fidelity"]["kl"]) for b, s in zip(batched, single)]
    details["batched_equals_single"]["kl_batched_single"] = kl
    close = all(abs(b - s) <= 2e-6 + 1e-3 * abs(s) for b, s in kl)  # records round KL to 6 decimals
    return padded and pruned and close and _tokens(batched) == _tokens(single)


def check_compile(wrapper, backend: str, details: dict) -> bool:
    cfg, its = method_config(), items(3)
    plain = get_method("latent_mas")(wrapper, its, cfg)
    kv_state.compile_steps(wrapper.model, backend)
    try:
        compiled = get_method("latent_mas")(wrapper, its, cfg)
    finally:
        wrapper.compile = False
    details["compile"] = {"backend": backend, "outputs": [r["output"] for r in compiled]}
    return _tokens(plain) == _tokens(compiled)


def check_keep_all(wrapper, details: dict) -> bool:
    its = items(3)
    enc = wrapper.encode([wrapper.render(it.question) for it in its])
    plain = KVState.empty(len(its), wrapper.device)
    wrapper.prefill_and_think(plain, enc, 3)
    kept = plain.clone()
    gens = [torch.Generator().manual_seed(i) for i in range(len(its))]
    Compressor(CompressionConfig(kv_policy="knn-top", kv_keep=1.0, kv_min_keep=0))(wrapper, kept, enc, gens)
    same_state = all(torch.equal(k1, k2) and torch.equal(v1, v2)
                     for (k1, v1), (k2, v2) in zip(plain.layer_tensors(), kept.layer_tensors()))
    base = get_method("latent_mas")(wrapper, its, method_config())
    keep_all = Compressor(CompressionConfig(kv_policy="knn-bottom", kv_keep=1.0))
    full = get_method("latent_mas")(wrapper, its, method_config(compressor=keep_all))
    same_runs = _tokens(base) == _tokens(full) and all(
        [a["kv_bytes_in"] for a in x["agents"]] == [a["kv_bytes_in"] for a in y["agents"]] for x, y in zip(base, full))
    details["keep_all"] = {"same_state": same_state, "same_runs": same_runs}
    return same_state and same_runs


def check_fidelity(wrapper, details: dict) -> bool:
    recs = get_method("latent_mas")(wrapper, items(3), method_config(
        compressor=Compressor(CompressionConfig(kv_policy="knn-top", kv_keep=1.0)), fidelity=True))
    details["fidelity"] = [r["fidelity"]["agreement"] for r in recs]
    return all(r["fidelity"]["agreement"] == 1.0 and r["fidelity"]["output_match"] for r in recs)


@torch.no_grad()
def check_bf16_masks(wrapper, details: dict) -> bool:
    """Left-padded batch vs each row alone vs the padding left visible (a masking bug made on purpose): the padded
    rows must be far closer to their unpadded selves than the broken ones, and nothing may be NaN or infinite."""
    model, dev = wrapper.model, wrapper.device
    enc = wrapper.encode([wrapper.render(q) for q in QUESTIONS])
    state = KVState.empty(len(QUESTIONS), dev)
    q_pos = kv_state._positions(state, enc.mask)
    mask, _ = attention_masks(model, state, q_pos, enc.mask)
    masks = mask.values() if isinstance(mask, dict) else [mask]
    right_dtype = all(m.dtype == model.dtype and m.min().item() == torch.finfo(model.dtype).min for m in masks)
    every = extend(model, KVState.empty(len(QUESTIONS), dev), input_ids=enc.ids, new_mask=enc.mask,
                   want="all_logits")
    finite = bool(torch.isfinite(every).all())
    batched = every[:, -1].float()
    broken = extend(model, KVState.empty(len(QUESTIONS), dev), input_ids=enc.ids, want="logits").float()
    padded_rows = [i for i in range(len(QUESTIONS)) if enc.mask[i, 0] == 0]
    err, err_broken = 0.0, 0.0
    for i in padded_rows:
        alone = extend(model, KVState.empty(1, dev), input_ids=enc.ids[i:i + 1, enc.mask[i] == 1],
                       want="logits").float()[0]
        err = max(err, (batched[i] - alone).abs().max().item())
        err_broken = max(err_broken, (broken[i] - alone).abs().max().item())
    details["bf16_masks"] = {"dtype_and_min": right_dtype, "finite_with_padding_queries": finite,
                             "padded_vs_alone_max_abs": err, "padding_visible_vs_alone_max_abs": err_broken,
                             "padded_rows": len(padded_rows)}
    return right_dtype and finite and bool(padded_rows) and err < 0.1 * err_broken


@torch.no_grad()
def check_attention_hook(wrapper, details: dict) -> bool:
    """Through architecture.attention: every layer reports its queries, the same per-layer masks give bit-identical
    logits, and a mask changed in one layer changes them (so the hook's masks are the ones attention uses)."""
    model, dev = wrapper.model, wrapper.device
    enc = wrapper.encode([wrapper.render(QUESTIONS[2])])
    state = KVState.empty(1, dev)
    extend(model, state, input_ids=enc.ids)
    tok = enc.ids[:, -1:]
    one = torch.ones(1, 1, dtype=torch.long, device=dev)
    mask, _ = attention_masks(model, state, kv_state._positions(state, one), one)
    n_layers = len(architecture.describe(model).layer_types)
    seen = set()

    def step(masks):
        with rollback(state), architecture.attention(model, masks=masks,
                                                     capture=lambda m, *a: seen.add(m.layer_idx)):
            return extend(model, state, input_ids=tok, want="logits", kind=TEXT)

    with rollback(state):
        plain = extend(model, state, input_ids=tok, want="logits", kind=TEXT)
    same = step([mask] * n_layers)
    hidden = mask.clone()
    hidden[..., : state.length // 2] = torch.finfo(mask.dtype).min  # layer 0 no longer sees the older half
    changed = step([hidden] + [mask] * (n_layers - 1))
    details["attention_hook"] = {"layers_seen": len(seen), "layers": n_layers,
                                 "identical": bool(torch.equal(plain, same)),
                                 "changed_mask_max_abs": (changed - plain).abs().max().item()}
    return len(seen) == n_layers and torch.equal(plain, same) and not torch.equal(plain, changed)


def check_kv_bytes(wrapper, details: dict) -> bool:
    cfg = wrapper.model.config
    state = synthetic_state(wrapper.model, 64, batch=2)
    n_kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    expected = 2 * cfg.num_hidden_layers * n_kv * d * wrapper.model.dtype.itemsize * 2 * 64
    details["kv_bytes"] = {"nbytes": state.nbytes(), "expected": expected}
    return state.nbytes() == expected


# --- timings ----------------------------------------------------------------------------------------------------

@torch.no_grad()
def decode_steps(model, state, tok, steps: int) -> torch.Tensor:
    with rollback(state):
        for _ in range(steps):
            tok = extend(model, state, input_ids=tok[:, None], want="logits", kind=TEXT).argmax(-1)
    return tok


def time_decode(wrapper, length: int, steps: int, repeats: int) -> float:
    """Median seconds per decode step on a synthetic cache of `length` entries (batch 1)."""
    model, dev = wrapper.model, wrapper.device
    state = synthetic_state(model, length)
    tok = torch.tensor([wrapper.tokenizer.eos_token_id or 0], device=dev)
    decode_steps(model, state, tok, 2)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = clock(dev)
        decode_steps(model, state, tok, steps)
        times.append((clock(dev) - t0) / steps)
    del state
    return median(times)


def time_latent(wrapper, lengths: list[int], repeats: int) -> dict:
    from common import prompt_of
    from latent_step import measure

    one = prompt_of(wrapper, 1)
    one.ids, one.mask = one.ids[:, -1:], one.mask[:, -1:]
    args = SimpleNamespace(batch=1, steps=4, repeats=repeats, wrapper_repeats=2)
    out = {}
    with torch.inference_mode():
        for length in lengths:
            t = measure(wrapper, args, one, length)
            out[length] = {"latent_ms": median(t["latent"]) * 1e3, "decode_ms": median(t["decode"]) * 1e3,
                           "latent_over_decode": median([a / b for a, b in zip(t["latent"], t["decode"])])}
    return out


def time_batches(wrapper, sizes: dict) -> dict:
    """Items per second of latent_mas (greedy, random model: every row writes max_new_tokens) per batch size; batch
    size 1 runs the first bs1_items items only."""
    its = items(sizes["items"])
    cfg = method_config(max_new_tokens=sizes["max_new_tokens"], latent_steps=sizes["latent_steps"])
    run, dev = get_method("latent_mas"), wrapper.device
    out, ref = {}, None
    with torch.inference_mode():
        run(wrapper, its[:1], cfg)  # warm-up
        for bs in sizes["batch_sizes"]:
            todo = its[: sizes["bs1_items"]] if bs == 1 else its
            t0 = clock(dev)
            recs = [r for s in range(0, len(todo), bs) for r in run(wrapper, todo[s:s + bs], cfg)]
            wall = clock(dev) - t0
            outputs = {r["index"]: r["output"] for r in recs}
            ref = ref or outputs
            out[bs] = {"items": len(todo), "wall_s": wall, "items_per_s": len(todo) / wall,
                       "same_outputs_as_first": sum(outputs[i] == ref[i] for i in ref if i in outputs),
                       "compared": sum(i in outputs for i in ref)}
    return out


def time_compile(wrapper, length: int, steps: int, repeats: int, backend: str) -> dict:
    eager = time_decode(wrapper, length, steps, repeats)
    t0 = clock(wrapper.device)
    kv_state.compile_steps(wrapper.model, backend)
    try:
        decode_steps(wrapper.model, synthetic_state(wrapper.model, length),
                     torch.tensor([wrapper.tokenizer.eos_token_id or 0], device=wrapper.device), 2)
        first_s = clock(wrapper.device) - t0
        compiled = time_decode(wrapper, length, steps, repeats)
    finally:
        wrapper.compile = False
    return {"backend": backend, "length": length, "eager_step_ms": eager * 1e3, "compiled_step_ms": compiled * 1e3,
            "compiled_over_eager": compiled / eager, "compile_and_first_steps_s": first_s}


def time_memory(wrapper, sizes: dict) -> dict:
    from memory import against_prediction, measure

    its = items(min(sizes["items"], 8))
    runs = {}
    for keep in (1.0, 0.5):
        comp = None if keep >= 1 else Compressor(CompressionConfig(kv_policy="knn-bottom", kv_keep=keep))
        cfg = method_config(compressor=comp, max_new_tokens=sizes["max_new_tokens"],
                            latent_steps=sizes["latent_steps"])
        runs[keep] = measure(wrapper, its, cfg, sizes["max_new_tokens"])
    return {str(k): {**m, **against_prediction(runs[1.0], m)} for k, m in runs.items()}


# --- driver -----------------------------------------------------------------------------------------------------

def _reason(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0][:300]
    return f"{type(e).__name__}: {first}"


def run(args) -> dict:
    sizes = SIZES["tiny" if args.tiny else "gpu"]
    budget = args.budget_s or sizes["budget_s"]
    if args.tiny:
        config, device = TINY, torch.device(args.device if args.device != "auto" else "cpu")
    else:
        config = json.loads(Path(args.config_json).read_text()) if args.config_json else QWEN3_4B
        if args.device == "auto" and not torch.cuda.is_available():
            sys.exit("gpu_check: torch sees no GPU; run with --tiny on CPU, or --device cpu to force the full size")
        device = torch.device("cuda" if args.device == "auto" else args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.time()
    result = {"config": config, "device": str(device), "tiny": args.tiny, "invariants": {}, "timings": {},
              "details": {}, "skipped": {}, "seconds": {}}
    inv, det, skipped = result["invariants"], result["details"], result["skipped"]

    def section(name: str, fn, store: dict, critical: bool = False):
        """Run one check or timing; an error is recorded (invariant false, timing skipped), never fatal."""
        if time.time() - t_start > budget and not critical:
            skipped[name] = f"time budget of {budget:.0f} s spent"
            return
        t0 = time.time()
        print(f"[gpu_check] {name} ...", file=sys.stderr, flush=True)
        try:
            store[name] = fn()
        except Exception as e:  # a device error is the finding: record it, go on with the rest
            if store is inv:
                inv[name] = False
                det[f"{name}_error"] = _reason(e)
            else:
                skipped[name] = _reason(e)
            if args.verbose:
                traceback.print_exc()
        result["seconds"][name] = round(time.time() - t0, 2)
        if device.type == "cuda":
            torch.cuda.empty_cache()

    from models import ModelWrapper

    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)

    def exact(on: bool):
        """fp32 without TF32 for the exact checks, back to bf16 (and the user's TF32 setting) for the rest: one model
        in memory at a time (the bf16 weights are the fp32 ones rounded; back in fp32 they are those, widened)."""
        if on:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        else:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        model.to(torch.float32 if on else torch.bfloat16)
        return ModelWrapper(model, wrapper.tokenizer, device)

    wrapper, model = build(config, device, torch.float32)
    result["seconds"]["build"] = round(time.time() - t_start, 2)
    result["parameters"] = sum(p.numel() for p in model.parameters())
    exact(True)
    section("batched_equals_single_fp32", lambda: check_batched_equals_single(wrapper, det), inv, critical=True)
    wrapper = exact(False)
    for name, fn in (("keep_all_bit_identical", check_keep_all), ("fidelity_one_at_keep_all", check_fidelity),
                     ("bf16_masks", check_bf16_masks), ("attention_hook_per_layer", check_attention_hook),
                     ("kv_bytes_match_shape", check_kv_bytes)):
        section(name, lambda fn=fn: fn(wrapper, det), inv, critical=True)

    timings = result["timings"]
    section("decode_step_ms", lambda: {n: time_decode(wrapper, n, sizes["steps"], sizes["repeats"]) * 1e3
                                       for n in sizes["lengths"]}, timings)
    section("latent_step", lambda: time_latent(wrapper, sizes["latent_lengths"], sizes["repeats"]), timings)
    section("batching", lambda: time_batches(wrapper, sizes), timings)
    section("memory", lambda: time_memory(wrapper, sizes), timings)

    # compilation last (it is the slow part): fp32 for the same-outputs check, then bf16 for its timing.
    backend = args.compile_backend or sizes["compile_backend"]
    if args.no_compile:
        skipped["compile_same_outputs_fp32"] = skipped["compile"] = "--no_compile"
    elif time.time() - t_start > budget:
        skipped["compile_same_outputs_fp32"] = skipped["compile"] = f"time budget of {budget:.0f} s spent"
    else:
        wrapper = exact(True)
        print("[gpu_check] compile_same_outputs_fp32 ...", file=sys.stderr, flush=True)
        t0 = time.time()
        try:  # torch.compile failing (no compiler, no triton) is a finding about the node, not a harness failure
            inv["compile_same_outputs_fp32"] = check_compile(wrapper, backend, det)
        except Exception as e:
            skipped["compile_same_outputs_fp32"] = _reason(e)
            if args.verbose:
                traceback.print_exc()
        result["seconds"]["compile_same_outputs_fp32"] = round(time.time() - t0, 2)
        torch._dynamo.reset()
        wrapper = exact(False)
        if "compile_same_outputs_fp32" in skipped:
            skipped["compile"] = "compilation failed in the same-outputs check"
        else:
            section("compile", lambda: time_compile(wrapper, sizes["compile_length"], sizes["steps"],
                                                    sizes["repeats"], backend), timings)
    result["machine"] = machine(device)
    if device.type == "cuda":
        result["machine"]["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    result["seconds"]["total"] = round(time.time() - t_start, 2)
    return result


def markdown(r: dict) -> str:
    gib = 2**30
    lines = [f"# gpu_check: {r['machine'].get('gpu') or r['machine'].get('cpu', r['device'])}",
             f"random {r['config']['model_type']} ({r['parameters'] / 1e9:.2f} B parameters), {r['seconds']['total']} "
             f"s in all", "", table(["invariant", "holds"], [[k, "yes" if v else "**NO**"]
                                                             for k, v in r["invariants"].items()])]
    t = r["timings"]
    if "decode_step_ms" in t:
        first = next(iter(t["decode_step_ms"].values()))
        lines += ["", table(["cache entries", "decode step ms (bf16, batch 1)", "vs first length"],
                            [[n, f"{ms:.2f}", f"{ms / first:.2f}"] for n, ms in t["decode_step_ms"].items()])]
    if "latent_step" in t:
        lines += ["", table(["cache entries", "latent step ms", "decode step ms", "latent/decode (paired median)"],
                            [[n, f"{x['latent_ms']:.2f}", f"{x['decode_ms']:.2f}", f"{x['latent_over_decode']:.2f}"]
                             for n, x in t["latent_step"].items()])]
    if "batching" in t:
        first = next(iter(t["batching"].values()))["items_per_s"]
        lines += ["", table(["batch size", "items", "items/s", "vs batch 1", "same outputs as batch 1 (bf16)"],
                            [[bs, x["items"], f"{x['items_per_s']:.3f}", f"{x['items_per_s'] / first:.2f}x",
                              f"{x['same_outputs_as_first']}/{x['compared']}"] for bs, x in t["batching"].items()])]
    if "memory" in t:
        lines += ["", table(["keep", "judger KV MiB", "predicted MiB", "vs prediction", "final cache MiB",
                             "peak over model MiB", "peak / (model + final cache)"],
                            [[k, f"{m['tensor_bytes'] / 2**20:.1f}", f"{m['predicted_bytes'] / 2**20:.1f}",
                              f"{100 * m['error']:+.2f}%", f"{m['final_storage_bytes'] / 2**20:.1f}",
                              f"{m['peak_over_base_bytes'] / 2**20:.1f}", f"{m['peak_over_model_and_final_cache']:.3f}"]
                             for k, m in t["memory"].items()])]
    if "compile" in t:
        c = t["compile"]
        lines += ["", f"compile ({c['backend']}), decode step at {c['length']} entries: eager {c['eager_step_ms']:.2f} "
                      f"ms, compiled {c['compiled_step_ms']:.2f} ms ({c['compiled_over_eager']:.2f}x), compile and "
                      f"first steps {c['compile_and_first_steps_s']:.1f} s"]
    if "max_memory_allocated_gib" in r["machine"]:
        lines.append(f"\nCUDA peak allocated over the whole check: {r['machine']['max_memory_allocated_gib']:.1f} "
                     f"GiB (of which weights {r['parameters'] * 2 / gib:.1f} GiB in bf16)")
    for name, why in r["skipped"].items():
        lines.append(f"- skipped {name}: {why}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="a tiny configuration on CPU (under 2 minutes)")
    p.add_argument("--config_json", help="a model's config.json to take the shape from (default: Qwen3-4B's)")
    p.add_argument("--device", default="auto", help="auto: cuda (cpu with --tiny)")
    p.add_argument("--out", default="bench/results/gpu_check.json", help="JSON; the Markdown table goes beside it")
    p.add_argument("--budget_s", type=float, default=0, help="timings stop starting after this (default 480; 60 "
                                                              "with --tiny); the invariants always run")
    p.add_argument("--no_compile", action="store_true", help="skip both compile checks")
    p.add_argument("--compile_backend", help="torch.compile backend (default inductor; eager with --tiny: "
                                                    "inductor compiles for minutes on a CPU)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--verbose", action="store_true", help="print the traceback of a failing check")
    args = p.parse_args(argv)
    result = run(args)
    md = markdown(result)
    print(md)
    write_json(args.out, result)
    Path(args.out).with_suffix(".md").write_text(md + "\n")
    bad = [k for k, v in result["invariants"].items() if v is not True]
    if bad:
        print(f"gpu_check: failing invariants: {', '.join(bad)}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
