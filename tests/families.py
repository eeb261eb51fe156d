"""A conformance matrix of tiny random decoder models, one per architecture family, built offline in well under a
second each on CPU, so that tests can check KV-cache invariants on every family.

Each row of ``FAMILIES`` gives a config builder (vocabulary and special ids come from the tiny test tokenizer of
``tests/conftest.py``), the causal-LM class, the attention implementations that run on CPU in float32, and notes on
what is peculiar about the family as transformers 5.24 implements it.  Sizes: 3 layers, hidden 64, 4 query heads,
2 key/value heads, head_dim 16, intermediate 128; sliding windows of 16 tokens (24 for mistral) so that sequences of
60-100 tokens cross them; families that alternate sliding and full layers have both kinds.

    model = build("gemma3", vocab_size=len(tok), bos_id=tok.bos_token_id, eos_id=tok.eos_token_id,
                  pad_id=tok.pad_token_id)

``python tests/families.py`` builds every family and prints its build time, layer types and parameter count.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

SLIDE = "sliding_attention"
FULL = "full_attention"
CHUNK = "chunked_attention"
WINDOW = 16  # tokens, for every sliding family except mistral

# Shared by every family; a family's own keywords override these.
SIZES = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
             head_dim=16, max_position_embeddings=2048)


@dataclass(frozen=True)
class Family:
    """One architecture family. ``rope`` is the rotary convention on the first ``rotary dims`` of a head (the rest
    pass through): "half" = rotate_half (Llama), "pairs" = adjacent pairs (2j, 2j+1); "partial" = fewer rotary dims than
    head_dim; gpt_oss's cos/sin are half width, llama4's are complex. ``nope`` lists the layers that skip RoPE.
    ``dict_mask``: the model's forward takes ``attention_mask={layer_type: 4-D mask}``; every family takes a single
    4-D additive float mask as-is on every layer."""

    name: str
    config_class: str  # name of the config class in transformers
    model_class: str  # name of the causal-LM class in transformers
    overrides: dict  # config keywords on top of SIZES and the token ids
    attn: tuple[str, ...]  # attention implementations that run on CPU in float32; the first is the default
    dict_mask: bool
    rope: str
    nope: tuple[int, ...]
    notes: str

    def config(self, vocab_size: int, bos_id: int, eos_id: int, pad_id: int):
        import transformers

        kwargs = dict(SIZES, vocab_size=vocab_size, bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id)
        kwargs.update(self.overrides)
        return getattr(transformers, self.config_class)(**kwargs)


def _family(name, config_class, model_class, notes, attn=("sdpa", "eager"), dict_mask=False, rope="half", nope=(),
            **overrides) -> Family:
    return Family(name, config_class, model_class, overrides, attn, dict_mask, rope, tuple(nope), notes)


_ROWS = [
    _family("llama", "LlamaConfig", "LlamaForCausalLM", "reference: full attention, rotate_half RoPE"),
    _family("qwen2", "Qwen2Config", "Qwen2ForCausalLM", "layers >= max_window_layers slide; q/k/v bias",
            dict_mask=True, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1),
    _family("qwen3", "Qwen3Config", "Qwen3ForCausalLM", "q_norm/k_norm per head (RMSNorm over head_dim) before RoPE",
            dict_mask=True, tie_word_embeddings=False),
    _family("qwen3_moe", "Qwen3MoeConfig", "Qwen3MoeForCausalLM", "qwen3 attention; top-2 of 4 experts",
            num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1),
    _family("mistral", "MistralConfig", "MistralForCausalLM", "every layer slides (no layer_types)",
            sliding_window=24),
    _family("ministral", "MinistralConfig", "MinistralForCausalLM", "mistral with layer_types",
            dict_mask=True, sliding_window=WINDOW, layer_types=[SLIDE, FULL, SLIDE]),
    _family("gemma", "GemmaConfig", "GemmaForCausalLM", "embedding module scales by sqrt(hidden); RMSNorm 1+w; tied"),
    _family("gemma2", "Gemma2Config", "Gemma2ForCausalLM",
            "attn (50) and final (30) logit softcaps; scaling query_pre_attn_scalar**-0.5 = 1/16; sdpa refused; tied",
            attn=("eager",), dict_mask=True, sliding_window=WINDOW, layer_types=[SLIDE, FULL, SLIDE]),
    _family("gemma3", "Gemma3TextConfig", "Gemma3ForCausalLM",
            "rotary_emb(x, pos, layer_type), theta 1e4 sliding / 1e6 full; q/k norm per head; embed scale; tied",
            dict_mask=True, sliding_window=WINDOW, layer_types=[SLIDE, SLIDE, FULL]),
    _family("phi3", "Phi3Config", "Phi3ForCausalLM", "fused qkv_proj; every layer slides",
            rope="half-partial", sliding_window=WINDOW, partial_rotary_factor=0.5),
    _family("phi", "PhiConfig", "PhiForCausalLM", "o_proj is dense; parallel block; LayerNorm",
            rope="half-partial"),
    _family("stablelm", "StableLmConfig", "StableLmForCausalLM", "per-head LayerNorm q/k, one weight per head",
            rope="half-partial", qk_layernorm=True),
    _family("olmo", "OlmoConfig", "OlmoForCausalLM", "non-parametric LayerNorm; clip_qkv clamps q/k/v if set"),
    _family("olmo2", "Olmo2Config", "Olmo2ForCausalLM",
            "q_norm/k_norm over the whole projection before the per-head view; no input norm (post-norm)"),
    _family("olmo3", "Olmo3Config", "Olmo3ForCausalLM", "olmo2 with sliding layers; rotary_emb(x, pos, layer_type)",
            dict_mask=True, sliding_window=WINDOW, layer_types=[SLIDE, SLIDE, FULL]),
    _family("smollm3", "SmolLM3Config", "SmolLM3ForCausalLM", "NoPE where no_rope_layers[i] == 0; tied",
            dict_mask=True, nope=(2,), no_rope_layers=[1, 1, 0]),
    _family("cohere", "CohereConfig", "CohereForCausalLM",
            "LayerNorm q/k over (heads, head_dim); parallel block; logits * logit_scale; tied",
            rope="pairs", use_qk_norm=True),
    _family("cohere2", "Cohere2Config", "Cohere2ForCausalLM",
            "RoPE on sliding layers only, full layers NoPE; parallel block; logits * logit_scale; tied",
            dict_mask=True, rope="pairs", nope=(2,), sliding_window=WINDOW, layer_types=[SLIDE, SLIDE, FULL]),
    _family("exaone4", "Exaone4Config", "Exaone4ForCausalLM",
            "q/k norm per head; full layers NoPE when sliding_window is set; post-norm",
            dict_mask=True, nope=(2,), sliding_window=WINDOW, layer_types=[SLIDE, SLIDE, FULL]),
    _family("granite", "GraniteConfig", "GraniteForCausalLM",
            "inputs_embeds * embedding_multiplier inside forward (also for given inputs_embeds); scaling = "
            "attention_multiplier; residual_multiplier; logits / logits_scaling",
            embedding_multiplier=12.0, attention_multiplier=0.125, residual_multiplier=0.22, logits_scaling=8.0),
    _family("glm", "GlmConfig", "GlmForCausalLM", "fused gate_up_proj; q/k/v bias", rope="pairs-partial"),
    _family("glm4", "Glm4Config", "Glm4ForCausalLM", "glm with post-attention and post-mlp norms",
            rope="pairs-partial"),
    _family("starcoder2", "Starcoder2Config", "Starcoder2ForCausalLM", "every layer slides; biases; LayerNorm; tied",
            sliding_window=WINDOW),
    _family("gpt_oss", "GptOssConfig", "GptOssForCausalLM",
            "attention sinks (eager only); yarn RoPE with attention_scaling 1.35; top-2 of 4 experts",
            attn=("eager",), dict_mask=True, rope="half-halfwidth", sliding_window=WINDOW,
            layer_types=[SLIDE, FULL, SLIDE], num_local_experts=4, num_experts_per_tok=2, intermediate_size=32,
            rope_parameters=dict(rope_type="yarn", rope_theta=150000.0, factor=32.0, beta_fast=32.0, beta_slow=1.0,
                                 truncate=False, original_max_position_embeddings=64)),
    _family("llama4", "Llama4TextConfig", "Llama4ForCausalLM",
            "chunked attention on RoPE layers; L2 qk_norm after RoPE; NoPE layer temperature from cache length; MoE",
            dict_mask=True, rope="pairs-complex", nope=(2,), attention_chunk_size=WINDOW, no_rope_layers=[1, 1, 0],
            num_local_experts=2, num_experts_per_tok=1, intermediate_size_mlp=128),
]
FAMILIES: dict[str, Family] = {row.name: row for row in _ROWS}


def model_class(name: str):
    import transformers

    return getattr(transformers, FAMILIES[name].model_class)


def build(name: str, vocab_size: int, bos_id: int, eos_id: int, pad_id: int, seed: int = 0, attn: str | None = None):
    """The tiny random model of family ``name``: seeded, float32, eval mode, on CPU; ``attn`` defaults to the
    family's first working attention implementation."""
    family = FAMILIES[name]
    attn = attn or family.attn[0]
    if attn not in family.attn:
        raise ValueError(f"{name} does not run with attn_implementation={attn!r} (works: {family.attn})")
    config = family.config(vocab_size, bos_id, eos_id, pad_id)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    model = model_class(name)(config)
    return model.to(torch.float32).eval()


def layer_types(model) -> list[str]:
    """Per-layer attention type of a built model, as its config states it (``full_attention`` when it has none)."""
    config = model.config
    types = getattr(config, "layer_types", None)
    if types is None:
        window = getattr(config, "sliding_window", None)
        types = [SLIDE if window is not None else FULL] * config.num_hidden_layers
    return list(types)


if __name__ == "__main__":
    import time

    start = time.perf_counter()
    import transformers.modeling_utils  # noqa: F401  (once per process, about a second: not any family's cost)

    print(f"import {time.perf_counter() - start:.2f} s")
    total = 0.0
    for family_name in FAMILIES:
        start = time.perf_counter()
        tiny = build(family_name, vocab_size=400, bos_id=1, eos_id=2, pad_id=0)
        took = time.perf_counter() - start
        total += took
        n_params = sum(p.numel() for p in tiny.parameters())
        print(f"{family_name:11s} {took * 1000:6.1f} ms {n_params:7d} params  {tiny.config._attn_implementation:6s} "
              f"{' '.join(t.split('_')[0] for t in layer_types(tiny))}")
    print(f"total {total:.2f} s")
