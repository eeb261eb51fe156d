"""The conformance matrix: every docs/design.md invariant of the shared KV state on a tiny random model of every decoder
family in tests/families.py (sliding windows of 16-24 tokens, crossed by every cache here). Adding a family is one
row there. `python tests/test_families.py` prints the measured differences per family."""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import architecture  # noqa: E402
import registry  # noqa: E402
from data import Item  # noqa: E402
from kv_state import KVState, extend, select  # noqa: E402
from methods import MethodConfig, get_method, latent_mas  # noqa: E402
from models import ModelWrapper  # noqa: E402
from tests.conftest import compressor  # noqa: E402
from tests.families import FAMILIES, build  # noqa: E402

NAMES = list(FAMILIES)
QUESTIONS = ["How many apples are left if each day the team sells 3 of 17?", "What is the total?",
             "If she sells 9 eggs each day for 2 dollars each, how many dollars is that?"]


@functools.cache
def _tokenizer(folder: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    tok.padding_side = "left"
    return tok


@functools.cache
def _family(name: str, folder: str) -> ModelWrapper:
    tok = _tokenizer(folder)
    model = build(name, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    return ModelWrapper(model, tok, torch.device("cpu"), realign=True)


@pytest.fixture(params=NAMES)
def fam(request, tiny_model_dir, one_thread) -> ModelWrapper:
    return _family(request.param, str(tiny_model_dir))


def _state(w: ModelWrapper, questions: list[str], steps: int = 3) -> KVState:
    """What a judger meets: two agents' prompts and latent steps (beyond every window here)."""
    state = KVState.empty(len(questions), w.device)
    for role in ("plan", "check"):
        w.prefill_and_think(state, w.encode([w.render(f"{role}: {q}") for q in questions]), steps)
    return state


def _next(w: ModelWrapper, questions: list[str]):
    return w.encode([w.render(f"solve: {q}") for q in questions])


def _gens(n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(i) for i in range(n)]


def _max_window(w: ModelWrapper) -> int:
    return max((x for x in architecture.describe(w.model).windows if x), default=0)


# --- the checks, each returning the largest difference it saw ------------------------------------------------------

def chaining(w: ModelWrapper) -> float:
    a = w.encode([w.render(QUESTIONS[0] + " " + QUESTIONS[2])])
    b = w.encode([w.render(QUESTIONS[1])])
    s1, s2 = KVState.empty(1, w.device), KVState.empty(1, w.device)
    extend(w.model, s1, input_ids=a.ids)
    chained = extend(w.model, s1, input_ids=b.ids, want="all_logits")
    one = extend(w.model, s2, input_ids=torch.cat([a.ids, b.ids], 1), want="all_logits")[:, a.ids.shape[1]:]
    assert s1.length > _max_window(w)
    return (chained - one).abs().max().item()


def latent_rollout(w: ModelWrapper) -> float:
    enc = w.encode([w.render(QUESTIONS[2])])
    state = KVState.empty(1, w.device)
    latents = w.prefill_and_think(state, enc, steps=4)
    embeds = torch.cat([w.model.get_input_embeddings()(enc.ids)] + [v[:, None, :] for v in latents], dim=1)
    ref = KVState.empty(1, w.device)
    extend(w.model, ref, inputs_embeds=embeds)
    return max(max((k1 - k2).abs().max().item(), (v1 - v2).abs().max().item())
               for (k1, v1), (k2, v2) in zip(state.layer_tensors(), ref.layer_tensors()))


def prune_vs_mask(w: ModelWrapper, policy: str = "knorm") -> float:
    """Pruned cache (original positions) vs the full cache with the dropped columns masked, batch 1."""
    state = _state(w, QUESTIONS[2:])
    ref = state.clone()
    nxt = _next(w, QUESTIONS[2:])
    compressor(policy, kv_keep=0.5, kv_min_keep=3)(w, state, nxt, _gens(1))
    kept = set(state.pos[0, 0, 0][state.mask[0] == 1].tolist())
    ref.mask[0, [c for c in range(ref.length) if c not in kept]] = 0  # batch 1, no padding: column == position
    assert state.length < ref.length and int(state.next_pos) > _max_window(w)
    a = extend(w.model, state, input_ids=nxt.ids, want="all_logits")
    b = extend(w.model, ref, input_ids=nxt.ids, want="all_logits")
    return (a - b).abs().max().item()


def batched_vs_one_by_one(w: ModelWrapper, policy: str = "snapkv", scope: str = "head") -> float:
    """latent_mas through latent steps, pruning at every hand-off and greedy decoding: a left-padded batch of three
    items vs each item alone (same outputs and judger KV sizes asserted). Returns the largest difference of the
    judger's next-token logits after its prompt."""
    items = [Item(index=i, question=q, gold="1", meta={}) for i, q in enumerate(QUESTIONS)]
    cfg = MethodConfig(answer_type="number", max_new_tokens=6, temperature=0.0, top_p=1.0, seed=0, latent_steps=3,
                       compressor=compressor(policy, kv_keep=0.5, kv_scope=scope, kv_min_keep=3))
    batched = get_method("latent_mas")(w, items, cfg)
    alone = [get_method("latent_mas")(w, [it], cfg)[0] for it in items]
    assert [r["output"] for r in batched] == [r["output"] for r in alone]
    assert [r["agents"][-1]["kv_tokens_in"] for r in batched] == [r["agents"][-1]["kv_tokens_in"] for r in alone]

    def judger_logits(some):
        team = cfg.get_team()
        encs = latent_mas._encode_team(w, some, cfg, team)
        state, _ = latent_mas._think(w, some, cfg, team, encs, cfg.compressor)
        return extend(w.model, state, input_ids=encs[-1].ids, new_mask=encs[-1].mask, want="logits")

    together = judger_logits(items)
    return max((together[i] - judger_logits([it])[0]).abs().max().item() for i, it in enumerate(items))


def keep_all_identical(w: ModelWrapper) -> bool:
    plain = _state(w, QUESTIONS)
    kept = plain.clone()
    nxt = _next(w, QUESTIONS)
    compressor("knorm", kv_keep=1.0)(w, kept, nxt, _gens(3))
    a = extend(w.model, plain, input_ids=nxt.ids, new_mask=nxt.mask, want="all_logits")
    b = extend(w.model, kept, input_ids=nxt.ids, new_mask=nxt.mask, want="all_logits")
    return torch.equal(a, b)


def rerotate_vs_fresh(w: ModelWrapper) -> float:
    """A prompt computed at positions 9.. and re-rotated to 0.. must give the keys and the next logits of a fresh pass
    at 0.. (RoPE and windows are relative, so nothing else changes)."""
    enc = w.encode([w.render(QUESTIONS[2])])
    n = enc.ids.shape[1]
    moved, fresh = KVState.empty(1, w.device), KVState.empty(1, w.device)
    moved.next_pos += 9
    extend(w.model, moved, input_ids=enc.ids)
    extend(w.model, fresh, input_ids=enc.ids)
    select(w.model, moved, torch.arange(n)[None, None, None, :], torch.ones(1, n, dtype=torch.long), "rerotate")
    diff = max((k1 - k2).abs().max().item() for (k1, _), (k2, _) in zip(moved.layer_tensors(), fresh.layer_tensors()))
    nxt = _next(w, QUESTIONS[:1])
    a = extend(w.model, moved, input_ids=nxt.ids, want="all_logits")
    b = extend(w.model, fresh, input_ids=nxt.ids, want="all_logits")
    return max(diff, (a - b).abs().max().item())


def _position_invariant(w: ModelWrapper) -> str | None:
    """Why shifting every position changes this model's outputs (so rerotate cannot equal a fresh pass), or None."""
    arch = architecture.describe(w.model)
    if "chunked_attention" in arch.layer_types:
        return "chunk boundaries sit at absolute positions"
    if getattr(w.model.config, "attn_temperature_tuning", False) and not all(architecture.rope_layers(w.model)):
        return "its NoPE layers scale queries by absolute position"
    return architecture.rerotate_problem(w.model)


# --- the tests -----------------------------------------------------------------------------------------------------

def test_chaining_equals_one_pass(fam):
    assert chaining(fam) < 1e-4


def test_latent_rollout_equals_one_forward(fam):
    assert latent_rollout(fam) < 1e-4


@pytest.mark.parametrize("policy", ["knorm", "snapkv"])
def test_prune_equals_mask_beyond_the_window(fam, policy):
    assert prune_vs_mask(fam, policy) < 1e-4


def test_batched_equals_one_by_one_through_pruning_and_decoding(fam):
    assert batched_vs_one_by_one(fam) < 1e-4


def test_keep_everything_is_bit_identical(fam):
    assert keep_all_identical(fam)


def test_rerotate_equals_a_fresh_pass(fam):
    reason = _position_invariant(fam)
    if reason:
        pytest.skip(reason)
    assert rerotate_vs_fresh(fam) < 1e-4


def test_latents_enter_at_the_norm_of_real_token_embeddings(fam):
    enc = fam.encode([fam.render(QUESTIONS[0])])
    real = fam.model.get_input_embeddings()(enc.ids).norm(dim=-1).mean().item()
    latents = fam.prefill_and_think(KVState.empty(1, fam.device), enc, steps=2)
    norms = torch.stack(latents).norm(dim=-1)
    assert torch.allclose(norms, torch.full_like(norms, architecture.embedding_norm(fam.model)), rtol=1e-4)
    assert 0.5 < architecture.embedding_norm(fam.model) / real < 2  # scaled embeddings (Gemma) included


def _assert_near_tie(scores: torch.Tensor, a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> None:
    """Batched and lone selections may differ only where the policy scores entries equal within rounding: knorm on
    the random fixtures of families that normalise keys (qwen3, gemma3, cohere; norm weights all 1) scores nearly
    every entry alike."""
    for s, x, y in zip(scores.flatten(0, 1), a.flatten(0, 1), b.flatten(0, 1)):
        differ = sorted(set(x.tolist()) ^ set(y.tolist()))  # kept by one, dropped by the other: must score alike
        assert not differ or s[differ].max() - s[differ].min() < tol, f"entries {differ} differ beyond a tie"


@pytest.mark.parametrize("scope", registry.SCOPES)
@pytest.mark.parametrize("policy", list(registry.TOKEN_POLICIES))
def test_every_policy_and_scope_selects_the_same_rows_batched(fam, policy, scope):
    """Each row of a padded batch keeps what it keeps alone, and the judger's logits after pruning agree."""
    nxt = _next(fam, QUESTIONS)
    batch = _state(fam, QUESTIONS)
    compressor(policy, kv_keep=0.5, kv_scope=scope, kv_min_keep=3)(fam, batch, nxt, _gens(3))
    kept = [batch.pos[:, b][..., batch.mask[b] == 1] for b in range(len(QUESTIONS))]
    logits = extend(fam.model, batch, input_ids=nxt.ids, new_mask=nxt.mask, want="logits")
    assert torch.isfinite(logits).all()
    for b, q in enumerate(QUESTIONS):
        one = _state(fam, [q])
        enc = _next(fam, [q])
        comp = compressor(policy, kv_keep=0.5, kv_scope=scope, kv_min_keep=3)
        scores = comp.scores(fam, one.clone(), enc, [_gens(3)[b]])[:, 0]  # (L', H', T): positions == columns
        comp(fam, one, enc, [_gens(3)[b]])
        if not torch.equal(kept[b], one.pos[:, 0]):
            _assert_near_tie(scores, kept[b], one.pos[:, 0])
            continue  # a tie broken the other way: a different cache, so different logits
        alone = extend(fam.model, one, input_ids=enc.ids, want="logits")
        assert (alone[0] - logits[b]).abs().max().item() < 1e-4


if __name__ == "__main__":  # the per-family differences quoted in the README and the closing note
    import tempfile

    from tests.conftest import _train_tokenizer

    torch.set_num_threads(1)
    folder = tempfile.mkdtemp()
    _train_tokenizer(Path(folder))
    print("| family | layer kinds | chaining | latent rollout | prune vs mask | batched vs alone | keep-all "
          "| rerotate vs fresh |")
    print("|---|---|---|---|---|---|---|---|")
    for name in NAMES:
        w = _family(name, folder)
        kinds = ", ".join(k.split("_")[0] for k in architecture.describe(w.model).kinds)
        reason = _position_invariant(w)
        rr = f"skipped: {reason}" if reason else f"{rerotate_vs_fresh(w):.1e}"
        print(f"| {name} | {kinds} | {chaining(w):.1e} | {latent_rollout(w):.1e} | {prune_vs_mask(w):.1e} "
              f"| {batched_vs_one_by_one(w):.1e} | {'identical' if keep_all_identical(w) else 'DIFFERENT'} | {rr} |")


# --- refused before the run ---------------------------------------------------------------------------------------

REFUSED = {  # families whose layers are not all attention layers: their state is recurrent, not a list of entries
    "falcon_h1": ("FalconH1Config", dict(mamba_d_ssm=64, mamba_n_heads=4, mamba_d_head=16, mamba_d_state=16,
                                         mamba_n_groups=1), "hybrid"),
    "qwen3_next": ("Qwen3NextConfig", dict(num_experts=2, num_experts_per_tok=1, moe_intermediate_size=32,
                                           shared_expert_intermediate_size=32, linear_num_value_heads=2,
                                           linear_num_key_heads=2, linear_key_head_dim=16, linear_value_head_dim=16),
                   "linear_attention"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_families_with_non_attention_layers_are_refused_in_one_line(name):
    import transformers

    cls, extra, kind = REFUSED[name]
    config = getattr(transformers, cls)(hidden_size=64, intermediate_size=128, num_hidden_layers=4, vocab_size=400,
                                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, **extra)
    with pytest.raises(architecture.ArchitectureError, match=f"has {kind} layers"):
        architecture.describe(transformers.AutoModelForCausalLM.from_config(config))


def test_attention_kernels_that_take_no_prepared_masks_are_refused(tiny_model_dir, capsys):
    import run

    with pytest.raises(SystemExit) as e:
        run.main(["--method", "baseline", "--model_name", str(tiny_model_dir), "--max_samples", "1",
                  "--attn_implementation", "flex_attention", "--output_dir", str(tiny_model_dir / "x")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "prepared masks" in err and "Traceback" not in err


# --- base models (no chat template) --------------------------------------------------------------------------------

def _base_wrapper(tiny_model_dir, bos: bool) -> ModelWrapper:
    from tokenizers import processors
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = None
    if bos:  # a tokenizer that puts BOS before every text, as base Llama / Mistral / Gemma tokenizers do
        tok._tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, tok.bos_token_id)])
    model = build("llama", len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    return ModelWrapper(model, tok, torch.device("cpu"))


@pytest.mark.parametrize("bos", [True, False])
def test_fallback_format_starts_with_bos_where_the_tokenizer_expects_one(tiny_model_dir, bos):
    w = _base_wrapper(tiny_model_dir, bos)
    assert w.prompt_format == "fallback"
    enc = w.encode([w.render("What is the total?")])
    assert (enc.ids[0, 0].item() == w.tokenizer.bos_token_id) == bos
    assert w.render("q").endswith("User: q\n\nAssistant:")


def test_decoding_stops_at_the_next_turn_marker(tiny_model_dir):
    """A base model runs on into the next turn; decoding stops there and the text ends before the marker."""
    w = _base_wrapper(tiny_model_dir, bos=False)
    enc = w.encode([w.render(QUESTIONS[0])])
    free = w.generate(KVState.empty(1, w.device), enc, 24)
    assert len(free.tokens[0]) == 24  # the random model never ends on its own
    marker = w.tokenizer.decode(free.tokens[0][10:12])
    w.stop_texts = (marker,)
    cut = w.generate(KVState.empty(1, w.device), enc, 24)
    assert len(cut.tokens[0]) <= 12 and marker not in cut.texts[0]
    assert free.texts[0].startswith(cut.texts[0])


def test_a_base_model_run_records_its_prompt_format_and_latent_norm(tiny_model_dir, tmp_path, capsys):
    import json

    import run

    w = _base_wrapper(tiny_model_dir, bos=True)
    folder = tmp_path / "base-llama"
    w.model.save_pretrained(folder)
    w.tokenizer.save_pretrained(folder)
    assert run.main(["--method", "latent_mas", "--model_name", str(folder), "--max_samples", "1", "--latent_steps",
                     "2", "--max_new_tokens", "4", "--temperature", "0", "--output_dir", str(tmp_path / "out")]) == 0
    assert "no chat template" in capsys.readouterr().err
    config = json.loads(next((tmp_path / "out").glob("*/config.json")).read_text())
    assert config["model"]["prompt_format"] == "fallback"
    assert config["model"]["latent_target_norm"] == pytest.approx(architecture.embedding_norm(w.model), rel=1e-5)
    assert config["model"]["architecture"]["layer_types"] == ["full_attention"] * 3


def test_every_family_of_the_matrix_has_its_row_in_the_docs():
    text = (Path(__file__).resolve().parents[1] / "docs" / "architectures.md").read_text()
    assert all(f"| {name} |" in text for name in NAMES), "regenerate the table: python tests/test_families.py"


def test_rerotate_is_refused_in_one_line_where_the_rotary_module_cannot_be_called_per_layer(tiny_model_dir):
    """Llama 4 returns complex frequencies; the check before the run names the reason instead of failing mid-run."""
    from compression import CompressionError

    w = _family("llama4", str(tiny_model_dir))
    with pytest.raises(CompressionError, match="rerotate cannot work with Llama4ForCausalLM"):
        compressor("knorm", kv_positions="rerotate").check(w.model)
    compressor("knorm", kv_positions="original").check(w.model)
