"""Model parallel (--device_map): with the tiny Qwen3 split over two devices by accelerate's dispatch_model, latent
steps, realignment, every compression policy and decoding run with every cache operation on its layer's device,
and give the records of a single-device run. No GPU here: the second device is tests/two_devices.py (CPU values,
CUDA's device-agreement checks)."""
from __future__ import annotations

import json

import pytest
import torch

import registry
from compression import Compressor
from config import CompressionConfig
from data import Item
from kv_state import KVState, extend, rollback, select
from methods import MethodConfig, get_method
from models import ModelWrapper, load_model
from registry import POSITIONS, SCOPES
from tests.conftest import results_of, run_argv
from tests.two_devices import SECOND, TwoDevices, split_device_map

QUESTIONS = ["How many apples are left if each day the team sells 3 of 17?",
             "If she sells 9 eggs each day for 2 dollars each, how many dollars is that?"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _items():
    return [Item(i, q, "1", {}) for i, q in enumerate(QUESTIONS)]


def _split_model(tiny_model_dir, first=2):
    """The tiny model, layers >= `first`, final norm and LM head on the second device (call inside TwoDevices)."""
    from accelerate import dispatch_model

    model, tok, dev = load_model(str(tiny_model_dir), device="cpu", dtype="float32")
    dispatch_model(model, split_device_map(model, first), main_device="cpu")
    return model, tok, dev


def _strip(records):
    return [dict({k: v for k, v in r.items() if k != "time_s"},
                 agents=[{k: v for k, v in a.items() if k not in ("time_s", "compress_time_s")}
                         for a in r["agents"]]) for r in records]


def _cases() -> dict:
    """The three methods, then every registered policy with every query it reads, cycling through the scopes,
    position modes and protections; the last one also measures fidelity."""
    cases = {m: (m if m != "latent" else "latent_mas", None, False) for m in ("baseline", "text_mas", "latent")}
    variants = registry.policy_variants()
    for i, (name, query) in enumerate(variants):
        comp = dict(kv_policy=name, kv_query=query, kv_scope=SCOPES[i % 3], kv_positions=POSITIONS[i % 3],
                    kv_protect=("none", "latents")[i % 2])
        fidelity = i == len(variants) - 1
        key = "-".join([name, query, comp["kv_scope"], comp["kv_positions"], comp["kv_protect"]]
                       + ["fidelity"] * fidelity)
        cases[key] = ("latent_mas", comp, fidelity)
    return cases


CASES = _cases()


@pytest.mark.parametrize("case", list(CASES))
def test_split_model_gives_single_device_records(case, tiny, tiny_model_dir):
    method, comp, fidelity = CASES[case]

    def cfg():
        return MethodConfig(answer_type="number", max_new_tokens=4, temperature=0.0, top_p=1.0, seed=0,
                            latent_steps=2, compressor=Compressor(CompressionConfig(**comp, kv_keep=0.6, kv_min_keep=2))
                            if comp else None,
                            fidelity=fidelity)

    with torch.inference_mode():
        one = get_method(method)(ModelWrapper(tiny[0], tiny[1], tiny[2], realign=True), _items(), cfg())
    mode = TwoDevices()
    with mode, torch.inference_mode():
        model, tok, dev = _split_model(tiny_model_dir)
        split = get_method(method)(ModelWrapper(model, tok, dev, realign=True), _items(), cfg())
    assert mode.second_ops > 0
    assert _strip(split) == _strip(one)


def test_cache_layers_live_on_their_layers_devices(tiny, tiny_model_dir):
    """After prompt, latent steps and a pruning with re-rotation: layers 0-1 of the cache on the CPU, 2-3 on the
    second device, the bookkeeping beside the inputs; KV bytes are the tensors' nbytes; values equal the one-device
    cache's."""
    def build(model, tok, dev):
        w = ModelWrapper(model, tok, dev, realign=True)
        state = KVState.empty(1, dev)
        w.prefill_and_think(state, w.encode([w.render(QUESTIONS[0])]), steps=3)
        index = torch.arange(0, state.length, 2, device=dev)[None, None, None, :]
        select(model, state, index, torch.ones(1, index.shape[-1], dtype=torch.long, device=dev), "rerotate")
        enc = w.encode(["now answer"])
        with rollback(state):  # the last layer's output comes back to the inputs' device
            assert extend(model, state, input_ids=enc.ids, want="hidden").device == dev
        logits = extend(model, state, input_ids=enc.ids, want="logits")
        return state, logits

    with torch.inference_mode():
        ref_state, ref_logits = build(*tiny)
        ref = [(k.clone(), v.clone()) for k, v in ref_state.layer_tensors()]
    with TwoDevices(), torch.inference_mode():
        state, logits = build(*_split_model(tiny_model_dir))
        devices = [k.device for k, _ in state.layer_tensors()]
        assert devices == [torch.device("cpu")] * 2 + [SECOND] * 2
        assert {v.device for _, v in state.layer_tensors()[2:]} == {SECOND}
        assert state.mask.device.type == state.pos.device.type == logits.device.type == "cpu"
        assert state.row_nbytes() == [state.nbytes()] == [sum(k.nbytes + v.nbytes for k, v in ref)]
        got = [(k.inner if k.device == SECOND else k, v.inner if v.device == SECOND else v)
               for k, v in state.layer_tensors()]
    for (k1, v1), (k2, v2) in zip(got, ref):
        assert torch.allclose(k1, k2, atol=1e-5) and torch.allclose(v1, v2, atol=1e-5)
    assert torch.allclose(logits, ref_logits, atol=1e-4)


def test_the_second_device_catches_a_mixed_operation():
    with TwoDevices():
        a = torch.ones(3)
        b = torch.ones(3).to("meta")
        assert b.device == SECOND and (b * 2).tolist() == [2.0] * 3
        with pytest.raises(RuntimeError, match="same device"):
            _ = a + b
        assert (a + b.to("cpu")).tolist() == [2.0] * 3


def _cli(tiny_model_dir, out, *extra):
    return run_argv(tiny_model_dir, "--method", "latent_mas", "--kv_policy", "knorm", "--kv_keep", "0.7",
                    "--output_dir", str(out), *extra, samples=2, tokens=4)


def _results(out):
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return results_of(run_dir)


def test_device_map_flag_loads_through_accelerate(tiny_model_dir, tmp_path):
    """On this CPU-only machine `auto` and a JSON map put every module on the CPU: the flag's path through
    from_pretrained(device_map=...) and the input-device lookup run, and the records equal a plain run's."""
    import run

    assert run.main(_cli(tiny_model_dir, tmp_path / "plain", "--device", "cpu")) == 0
    assert run.main(_cli(tiny_model_dir, tmp_path / "auto", "--device_map", "auto")) == 0
    dm = tmp_path / "map.json"
    dm.write_text(json.dumps({"": "cpu"}))
    assert run.main(_cli(tiny_model_dir, tmp_path / "file", "--device_map", str(dm), "--max_memory", "cpu=4GiB")) == 0
    plain = _strip(_results(tmp_path / "plain"))
    assert _strip(_results(tmp_path / "auto")) == plain == _strip(_results(tmp_path / "file"))
