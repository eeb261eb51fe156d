"""The bench scripts' measuring parts run on the tiny model (the scripts themselves are run by hand, not here)."""
from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import torch

from models import ModelWrapper
from tests.conftest import ROOT, compressor


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_synthetic_state_is_a_cache_the_model_reads(tiny):
    common = _bench("common")
    model, tok, dev = tiny
    w = ModelWrapper(model, tok, dev)
    state = common.synthetic_state(model, 40, batch=2, block=20, latents=5)
    assert state.valid_tokens() == [40, 40] and state.kind_counts(2) == [10, 10]
    enc = common.prompt_of(w, 12, batch=2)
    assert enc.ids.shape[1] >= 12
    with torch.inference_mode():
        w.prefill_and_think(state, enc, 2)
    assert state.next_pos.tolist() == [40 + enc.ids.shape[1] + 2] * 2


def test_latent_step_and_compression_overhead_measure(tiny):
    model, tok, dev = tiny
    w = ModelWrapper(model, tok, dev)
    latent_step, overhead = _bench("latent_step"), _bench("compression_overhead")
    one = latent_step.prompt_of(w, 1)
    one.ids, one.mask = one.ids[:, -1:], one.mask[:, -1:]
    args = SimpleNamespace(batch=1, steps=2, repeats=2, wrapper_repeats=1)
    with torch.inference_mode():
        t = latent_step.measure(w, args, one, 16)
    assert {k: len(v) for k, v in t.items()} == {"latent": 2, "decode": 2, "lm_head": 2, "think": 1, "generate": 1}
    args = SimpleNamespace(prompt_tokens=8, latent_steps=2, keep=0.5, seed=0, repeats=1,
                           policies=["knorm", overhead.ATTENTION_KNN], scopes=["shared", "head"])
    enc = overhead.prompt_of(w, 8)
    with torch.inference_mode():
        agent, times = overhead.measure(w, args, enc, 32, warm_up=False)
    assert len(agent) == 1 and set(times) == {(p, s) for p in args.policies for s in args.scopes}


def test_memory_counts_storage_so_views_show_and_pruning_frees(tiny):
    from kv_state import extend, rollback
    from utils import item_generator

    common, memory = _bench("common"), _bench("memory")
    model, tok, dev = tiny
    w = ModelWrapper(model, tok, dev)
    state = common.synthetic_state(model, 40, batch=2)
    assert memory.storage_bytes(state) == state.nbytes()
    enc = common.prompt_of(w, 8, batch=2)
    with torch.inference_mode():
        with rollback(state):  # the rolled-back columns stay in the storage the truncated views point into
            extend(model, state, input_ids=enc.ids, new_mask=enc.mask)
        assert memory.storage_bytes(state) > state.nbytes()
        compressor("random", kv_keep=0.5, kv_min_keep=0)(w, state, enc, [item_generator(0, i, "kv") for i in range(2)])
    # pruning copies the kept entries into fresh tensors: the dropped ones no longer hold memory
    assert state.valid_tokens() == [20, 20]
    assert memory.storage_bytes(state) == state.nbytes() == state.length * 2 * sum(
        k.shape[1] * k.shape[3] * k.element_size() * 2 for k, _ in state.layer_tensors())


def test_versus_reference_compares_ids_outputs_and_kept_entries(tiny_model_dir, tmp_path):
    """The side-by-side's verdict: identical, else the first differing agent and token (a stop token on one side
    only is no difference); and the model folder the 4.57 reference reads (Qwen in the name, rope_theta)."""
    import json

    vs = _bench("versus_reference")
    decode = str
    ours = {"agents": [{"name": "A", "input_ids": [1, 2, 3], "kept": None},
                       {"name": "J", "input_ids": [4, 5], "output_ids": [7, 8, 2], "kept": [0, 2]}]}
    ref = {"agents": [{k: v for k, v in a.items() if k != "kept"} for a in ours["agents"]]}  # no kNN recorded
    ref["agents"][1]["output_ids"] = [7, 8]
    assert vs.compare_item(ours, ref, {2}, decode) == "identical (2 agents' input ids, 2 generated tokens)"
    ref["agents"][1]["kept"] = [0, 2]
    assert vs.compare_item(ours, ref, {2}, decode).endswith("kept entries at 1 compressions)")
    ref["agents"][1]["kept"] = [0, 1]
    assert vs.compare_item(ours, ref, {2}, decode) == "J: kept entries differ (2 / 2 kept)"
    ref["agents"][1]["output_ids"] = [7, 9]
    assert vs.compare_item(ours, ref, {2}, decode).startswith("J: generated token 1 differs: here '[8]'")
    seen = []
    why = vs.compare_item(ours, ref, {2}, decode, lambda *x: seen.append(x) or (3.5, 3.25), 1e-5)
    assert seen == [([4, 5], [7], 8, 9)] and why.endswith("a gap of 2.5e-01 against the reference's sampling "
                                                         "temperature 1e-05)")
    ref["agents"][0]["input_ids"] = [1, 3, 3]
    assert vs.compare_item(ours, ref, {2}, decode) == "A: input ids differ at 1 of 3 / 3"
    folder = vs.qwen_model_folder(str(tiny_model_dir), tmp_path)
    config = json.loads((folder / "config.json").read_text())
    assert folder.name.startswith("Qwen-") and config["rope_theta"] == config["rope_parameters"]["rope_theta"]
    assert (folder / "model.safetensors").exists()
