"""bench/gpu_check.py: --tiny runs the whole check on CPU and every invariant holds; a masking bug made on purpose
makes its checks fail (so a GPU node that breaks masks would show)."""
from __future__ import annotations

import json

import torch

from tests.test_bench import _bench


def test_tiny_check_runs_every_invariant_and_timing(tmp_path, one_thread):
    gpu_check = _bench("gpu_check")
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--tiny", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert len(r["invariants"]) >= 7 and all(v is True for v in r["invariants"].values())
    assert {"decode_step_ms", "latent_step", "batching", "memory"} <= set(r["timings"])
    assert r["timings"]["batching"]["1"]["same_outputs_as_first"] == r["timings"]["batching"]["1"]["compared"] > 0
    assert "| batched_equals_single_fp32 | yes |" in out.with_suffix(".md").read_text()


def test_checks_fail_when_padding_is_visible(monkeypatch, one_thread):
    import kv_state

    gpu_check = _bench("gpu_check")
    wrapper, _ = gpu_check.build(gpu_check.TINY, torch.device("cpu"), torch.float32)
    details = {}
    assert gpu_check.check_batched_equals_single(wrapper, details)
    assert gpu_check.check_attention_hook(wrapper, details)
    # every key visible: padding and later tokens included
    monkeypatch.setattr(kv_state, "_additive", lambda seen, heads, dtype: torch.zeros(
        seen.shape[0], heads, *seen.shape[2:], dtype=dtype, device=seen.device))
    assert not gpu_check.check_batched_equals_single(wrapper, details)
    assert not gpu_check.check_bf16_masks(wrapper, details)
