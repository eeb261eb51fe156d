"""KV-cache compression: every policy through the same checks, plus the position modes, the seed-faithful kNN,
and compression inside latent_mas runs."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import compression
import registry
import run
from data import Item
from kv_state import LATENT, KVState, extend
from methods import MethodConfig, get_method
from models import ModelWrapper
from registry import POSITIONS, SCOPES
from tests.conftest import ROOT, compressor

POLICY_NAMES = list(registry.TOKEN_POLICIES)  # kvcomm keeps layers, not entries: tests/test_handoff.py
QUESTIONS = ["How many apples are left if each day the team sells 3 of 17?", "What is the total?",
             "If she sells 9 eggs each day for 2 dollars each, how many dollars is that?"]


def _wrapper(bundle):
    model, tok, dev = bundle
    return ModelWrapper(model, tok, dev)


def _state(w, questions, steps=3):
    """A cache like the judger meets: two agents' prompts and latent steps."""
    state = KVState.empty(len(questions), w.device)
    for role in ("plan", "check"):
        w.prefill_and_think(state, w.encode([w.render(f"{role}: {q}") for q in questions]), steps)
    return state


def _next_prompt(w, questions):
    return w.encode([w.render(f"solve: {q}") for q in questions])


def _gens(n):
    return [torch.Generator().manual_seed(i) for i in range(n)]


def test_one_registry_row_per_policy_class():
    """registry.POLICIES is the one list: each row has a scoring class here (registered with @policy), known queries
    and needs; each class here with a `score` is some row's; docs/compression.md holds the generated table."""
    import dataclasses
    import inspect

    classes = {name for name, obj in vars(compression).items()
               if inspect.isclass(obj) and obj.__module__ == "compression"
               and (hasattr(obj, "score") or hasattr(obj, "layer_scores"))}
    assert set(compression.CLASSES) == set(registry.POLICIES)
    assert {cls.__name__ for cls in compression.CLASSES.values()} == classes
    for name, p in registry.POLICIES.items():
        assert p.name == name and dataclasses.is_dataclass(compression.CLASSES[name])
        assert set(p.queries) <= set(registry.QUERIES) and set(p.needs) <= set(registry.NEEDS)
        for query in p.queries or (registry.DEFAULT_QUERY,):
            comp = compressor(name, kv_query=query)
            assert set(comp.needs) <= set(registry.NEEDS) and registry.query_problem(name, query) is None
    assert compression.POLICIES is registry.POLICIES
    assert registry.policies_markdown() in (ROOT / "docs" / "compression.md").read_text()


def test_needs_follow_the_query():
    assert compressor("snapkv").needs == ("attention",)
    assert compressor("knn-top", kv_query="attention").needs == ("attention",) and compressor("knn-top").needs == ()
    assert registry.query_problem("knorm", "attention") == "--kv_query attention applies to --kv_policy " + " / ".join(
        n for n, p in registry.POLICIES.items() if "attention" in p.queries)


@pytest.mark.parametrize("policy", POLICY_NAMES)
@pytest.mark.parametrize("scope", SCOPES)
def test_policy_keeps_budget_recent_window_and_order(tiny, policy, scope):
    w = _wrapper(tiny)
    state = _state(w, QUESTIONS)
    valid = state.mask.sum(1)
    comp = compressor(policy, kv_keep=0.5, kv_scope=scope, kv_min_keep=4)
    newest = [state.pos[0, b, 0][state.mask[b] == 1][-4:].tolist() for b in range(3)]
    comp(w, state, _next_prompt(w, QUESTIONS), _gens(3))
    expected = torch.clamp((valid.double() * 0.5).floor().long(), min=4)
    assert state.mask.sum(1).tolist() == expected.tolist()
    lp, _, hp, _ = state.pos.shape
    for b in range(3):
        cols = state.mask[b] == 1
        for li in range(lp):
            for h in range(hp):
                kept = state.pos[li, b, h][cols]
                assert bool((kept[1:] > kept[:-1]).all()), "kept entries must stay in cache order"
                assert set(newest[b]) <= set(kept.tolist()), "the recent window must survive"
    # kept keys are copies of original entries, so bytes shrink with the tokens
    assert state.nbytes() == sum(k.nbytes + v.nbytes for k, v in state.layer_tensors())


def _prune_vs_mask(w, policy, questions=QUESTIONS[:1]):
    state = _state(w, questions)
    ref = state.clone()
    comp = compressor(policy, kv_keep=0.6, kv_scope="shared", kv_min_keep=3)
    nxt = _next_prompt(w, questions)
    comp(w, state, nxt, _gens(1))
    kept = set(state.pos[0, 0, 0][state.mask[0] == 1].tolist())
    for col in range(ref.length):  # batch 1, no padding: column == position
        if col not in kept:
            ref.mask[0, col] = 0
    assert state.length < ref.length
    a = extend(w.model, state, input_ids=nxt.ids, new_mask=nxt.mask, want="logits")
    b = extend(w.model, ref, input_ids=nxt.ids, new_mask=nxt.mask, want="logits")
    return (a - b).abs().max().item()


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_prune_equals_mask_tiny_qwen3(tiny, policy):
    assert _prune_vs_mask(_wrapper(tiny), policy) < 1e-4


def test_prune_equals_mask_smollm2(smol):
    assert _prune_vs_mask(_wrapper(smol), "knn-bottom") < 1e-4


def test_shift_positions_differ_from_the_correct_ones(tiny):
    """The seed's `shift` continues at the pruned length with stale key phases: its logits leave the masked
    reference that `original` matches."""
    w = _wrapper(tiny)
    outs = {}
    for mode in ("original", "shift"):
        state = _state(w, QUESTIONS[:1])
        compressor("knn-bottom", kv_keep=0.5, kv_positions=mode)(w, state, _next_prompt(w, QUESTIONS[:1]), _gens(1))
        nxt = _next_prompt(w, QUESTIONS[:1])
        outs[mode] = (extend(w.model, state, input_ids=nxt.ids, new_mask=nxt.mask, want="logits"),
                      state.next_pos.item())
    assert outs["shift"][1] < outs["original"][1]
    assert (outs["shift"][0] - outs["original"][0]).abs().max() > 1e-3


def test_rerotate_matches_contiguous_positions(tiny):
    """Layer-0 keys depend only on the token and its position, so re-rotated kept keys must equal the keys of a
    fresh pass over the kept tokens at positions 0..K-1."""
    w = _wrapper(tiny)
    enc = w.encode([w.render(QUESTIONS[2])])
    state = KVState.empty(1, w.device)
    extend(w.model, state, input_ids=enc.ids, new_mask=enc.mask)
    compressor("keydiff", kv_keep=0.5, kv_positions="rerotate", kv_min_keep=2)(w, state, _next_prompt(w, QUESTIONS[:1]),
                                                                      _gens(1))
    kept_cols = sorted(set(range(enc.ids.shape[1])) - set())  # positions before pruning == columns
    assert state.pos[0, 0, 0].tolist() == list(range(state.length))
    assert state.next_pos.item() == state.length
    # which tokens were kept: compare the values of layer 0 (values carry no rotation)
    v_kept = state.layer_tensors()[0][1]
    fresh = KVState.empty(1, w.device)
    extend(w.model, fresh, input_ids=enc.ids)
    v_all = fresh.layer_tensors()[0][1]
    kept = [next(c for c in kept_cols if torch.equal(v_all[0, :, c], v_kept[0, :, j])) for j in range(state.length)]
    ref = KVState.empty(1, w.device)
    extend(w.model, ref, input_ids=enc.ids[:, kept])
    assert torch.allclose(state.layer_tensors()[0][0], ref.layer_tensors()[0][0], atol=1e-5)


def test_keep_everything_is_bit_identical(tiny):
    w = _wrapper(tiny)
    plain = _state(w, QUESTIONS)
    kept = plain.clone()
    compressor("knn-top", kv_keep=1.0, kv_min_keep=0)(w, kept, _next_prompt(w, QUESTIONS), _gens(3))
    for (k1, v1), (k2, v2) in zip(plain.layer_tensors(), kept.layer_tensors()):
        assert torch.equal(k1, k2) and torch.equal(v1, v2)
    cfg = dict(answer_type="number", max_new_tokens=8, temperature=0.0, top_p=1.0, seed=0, latent_steps=2)
    items = [Item(i, q, "1", {}) for i, q in enumerate(QUESTIONS)]
    base = get_method("latent_mas")(w, items, MethodConfig(**cfg))
    full = get_method("latent_mas")(w, items, MethodConfig(**cfg, compressor=compressor("knn-bottom", kv_keep=1.0)))
    for a, b in zip(base, full):
        assert a["output"] == b["output"] and b["kv_kept_share"] == 1.0
        assert [x["kv_bytes_in"] for x in a["agents"]] == [x["kv_bytes_in"] for x in b["agents"]]


def _strip(records):
    drop = {"time_s", "compress_time_s", "kv_bytes_in", "kv_bytes_out", "kv_bytes_before"}
    return [dict({k: v for k, v in r.items() if k != "time_s"},
                 agents=[{k: v for k, v in a.items() if k not in drop} for a in r["agents"]]) for r in records]


def _matrix():
    """Every registered policy with every query it reads, cycling through the scopes and the position modes."""
    return [(name, query, SCOPES[i % 3], POSITIONS[i % 3])
            for i, (name, query) in enumerate(registry.policy_variants())]


@pytest.fixture(scope="module")
def tiny_varied_keys(tiny):
    """The tiny Qwen3 with k_norm weights drawn around 1: its keys are RMS-normalised with weight 1 and RoPE keeps
    norms, so every key has the same L2 norm and knorm would score nothing but rounding (a tie broken one way
    batched and another alone says nothing about batching)."""
    import copy

    model, tok, dev = tiny
    model = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith("k_norm"):
                module.weight.copy_(1 + 0.5 * torch.randn(module.weight.shape, generator=g))
    return model, tok, dev


@pytest.mark.parametrize("policy, query, scope, positions", _matrix())
def test_batched_equals_unbatched_with_compression(tiny_varied_keys, policy, query, scope, positions):
    w = _wrapper(tiny_varied_keys)
    comp = compressor(policy, kv_keep=0.6, kv_scope=scope, kv_positions=positions, kv_min_keep=2, kv_query=query)
    cfg = MethodConfig(answer_type="number", max_new_tokens=8, temperature=0.0, top_p=1.0, seed=0, latent_steps=3,
                       compressor=comp)
    items = [Item(i, q, "1", {}) for i, q in enumerate(QUESTIONS)]
    run_batch = get_method("latent_mas")
    assert _strip(run_batch(w, items, cfg)) == _strip([run_batch(w, [it], cfg)[0] for it in items])


def test_records_measure_compounding_and_protection(tiny):
    w = _wrapper(tiny)
    comp = compressor("knn-bottom", kv_keep=0.5, kv_min_keep=2, kv_protect="latents")
    cfg = MethodConfig(answer_type="number", max_new_tokens=6, temperature=0.0, top_p=1.0, seed=0, latent_steps=4,
                       compressor=comp)
    rec = get_method("latent_mas")(w, [Item(0, QUESTIONS[0], "1", {})], cfg)[0]
    planner, critic, refiner, judger = rec["agents"]
    assert critic["kv_tokens_before"] == planner["kv_tokens_out"] == planner["prompt_tokens"] + 4
    assert critic["kv_tokens_in"] == max(critic["kv_tokens_before"] // 2, 4)  # 4 latents protected
    assert judger["kv_tokens_full"] == sum(a["prompt_tokens"] + a["latent_steps"] for a in (planner, critic, refiner))
    assert rec["kv_kept_share"] == pytest.approx(judger["kv_tokens_in"] / judger["kv_tokens_full"], abs=1e-4)
    assert rec["kv_kept_share"] < 0.5  # compounding over three hand-offs
    per_token = judger["kv_bytes_in"] // judger["kv_tokens_in"]
    assert judger["kv_bytes_before"] == judger["kv_tokens_before"] * per_token


def test_protect_latents_keeps_every_latent(tiny):
    w = _wrapper(tiny)
    state = _state(w, QUESTIONS[:1], steps=5)
    assert state.kind_counts(LATENT) == [10]
    compressor("knn-top", kv_keep=0.3, kv_min_keep=0, kv_protect="latents")(w, state, _next_prompt(w, QUESTIONS[:1]),
                                                                   _gens(1))
    assert state.kind_counts(LATENT) == [10]


def test_fidelity_is_perfect_without_loss_and_measures_loss(tiny):
    w = _wrapper(tiny)
    items = [Item(0, QUESTIONS[0], "1", {}), Item(1, QUESTIONS[1], "1", {})]
    base = dict(answer_type="number", max_new_tokens=8, temperature=0.0, top_p=1.0, seed=0, latent_steps=2,
                fidelity=True)
    same = get_method("latent_mas")(w, items, MethodConfig(**base, compressor=compressor("knn-top", kv_keep=1.0)))
    for r in same:
        assert r["fidelity"]["agreement"] == 1.0 and r["fidelity"]["kl"] < 1e-6 and r["fidelity"]["output_match"]
    lossy = get_method("latent_mas")(w, items, MethodConfig(**base, compressor=compressor("knn-top", kv_keep=0.2,
                                                                                          kv_min_keep=1)))
    assert all(r["fidelity"]["kl"] > 1e-6 for r in lossy)
    assert all(r["fidelity"]["ref_output"] == s["output"] for r, s in zip(lossy, same))


def test_seed_knn_picks_the_indices_of_a_direct_recomputation():
    """Hand-built cache, the seed's recipe written out (seed-spec 4.3-4.4) against Compressor + Knn."""
    g = torch.Generator().manual_seed(3)
    n_layers, heads, t, d, hidden = 4, 2, 23, 8, 24
    layers = [(torch.randn(1, heads, t, d, generator=g), torch.randn(1, heads, t, d, generator=g))
              for _ in range(n_layers)]
    q = torch.randn(1, hidden, generator=g)
    state = KVState.from_tensors(layers, torch.ones(1, t, dtype=torch.long), torch.tensor([t]),
                    torch.arange(t)[None, None, None, :], torch.ones(1, 1, 1, t, dtype=torch.long))
    fake = SimpleNamespace(model=SimpleNamespace(), embed_mean=lambda enc: q)
    for strategy, p, min_keep in (("top", 0.6, 5), ("bottom", 0.6, 5), ("top", 0.3, 2)):
        # the seed, directly
        k_mid = layers[n_layers // 2][0].mean(dim=1)[0]
        qd = q.view(1, -1, d).mean(dim=1)[0]
        sim = torch.nn.functional.normalize(k_mid, dim=-1) @ torch.nn.functional.normalize(qd, dim=0)
        k = min(max(int(t * p), min_keep), t)
        r = min(min_keep, t)
        early = sim[: t - r]
        idx = early.topk(k - r, largest=(strategy == "top")).indices.sort().values
        expected = idx.tolist() + list(range(t - r, t))
        s = KVState.from_tensors([(a.clone(), b.clone()) for a, b in layers], state.mask.clone(),
                    state.next_pos.clone(), state.pos.clone(), state.kinds.clone())
        comp = compressor(f"knn-{strategy}", kv_keep=p, kv_min_keep=min_keep)
        hand = compression.HandOff(fake, s, None, "shared", _gens(1))
        scores = comp.policy.score(hand)
        # the same selection as Compressor would make, without a model for the gather
        prot = comp.protected(s)
        budget = int(comp.budgets(s)[0])
        sc = scores.masked_fill(prot, float("inf"))
        picked = sc.topk(budget, dim=-1).indices.sort(dim=-1).values[0, 0, 0].tolist()
        assert picked == expected, (strategy, p)


@pytest.mark.parametrize("argv, words", [
    (["--knn_percentage", "0"], "--kv_keep"),
    (["--knn_percentage", "1.5"], "--kv_keep"),
    (["--knn_min_keep", "-1"], "--kv_min_keep"),
    (["--kv_policy", "h2o-magic"], "--kv_policy"),
    (["--kv_scope", "token"], "--kv_scope"),
    (["--kv_query", "attention", "--kv_policy", "knorm"], "--kv_query attention"),
    (["--knn_filter", "--knn_strategy", "bottom", "--kv_policy", "knn-top"], "--knn_filter"),
])
def test_bad_compression_flags_exit_2(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        run.main(["--method", "latent_mas", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


@pytest.mark.parametrize("method", ["text_mas", "baseline"])
def test_fidelity_and_compression_need_latent_mas(method, capsys):
    for flags in (["--fidelity"], ["--kv_policy", "knn-top"]):
        with pytest.raises(SystemExit) as e:
            run.main(["--method", method, *flags])
        assert e.value.code == 2 and "latent_mas" in capsys.readouterr().err


def test_seed_query_for_a_hidden_size_that_is_not_a_multiple_of_head_dim():
    """The seed averages the embedding's head_dim-wide chunks; a partial last chunk is zero-filled (documented)."""
    q = torch.arange(1.0, 11.0)[None]  # width 10, head_dim 4: chunks [1..4], [5..8], [9, 10, 0, 0]
    torch.testing.assert_close(compression._fit_query(q, 4), torch.tensor([[5.0, 6.0, 10 / 3, 4.0]]))
    assert compression._fit_query(q[:, :8], 4).tolist() == [[3.0, 4.0, 5.0, 6.0]]


def test_seed_flags_map_onto_the_registry(tiny_model_dir, tmp_path):
    import json
    assert run.main(["--method", "latent_mas", "--model_name", str(tiny_model_dir), "--max_samples", "1",
                     "--max_new_tokens", "4", "--temperature", "0", "--latent_steps", "2", "--knn_filter",
                     "--knn_strategy", "bottom", "--knn_percentage", "0.6", "--output_dir", str(tmp_path)]) == 0
    summary = json.loads(next(tmp_path.glob("*/summary.json")).read_text())
    assert summary["compression"]["kv_policy"] == "knn-bottom" and summary["compression"]["kv_keep"] == 0.6
    assert 0 < summary["kv_kept_share_judger_mean"] < 1 and "knn-bottom" in next(tmp_path.iterdir()).name


def test_prompt_attention_is_the_models_own_attention(tiny_model_dir):
    """The attention the policies score with equals the attention weights the model itself computes (eager) for the
    next prompt on the cache; the last-queries form SnapKV uses equals the last rows of the full one."""
    from kv_state import _positions
    from models import load_model

    model, tok, dev = load_model(str(tiny_model_dir), device="cpu", dtype="float32", attn_implementation="eager")
    w = ModelWrapper(model, tok, dev)
    state = _state(w, QUESTIONS[:2])
    enc = _next_prompt(w, QUESTIONS[:2])
    assert int(enc.mask.sum(1).min()) < enc.ids.shape[1] and int(state.mask.sum(1).min()) < state.length  # padded
    hand = compression.HandOff(w, state, enc, "head", _gens(2))
    with torch.inference_mode():
        full, last = hand.attention(), hand.attention(last=4)
        ref = state.clone()
        out = model(input_ids=enc.ids, attention_mask=torch.cat([ref.mask, enc.mask], dim=1),
                    position_ids=_positions(ref, enc.mask), cache=ref.cache, output_attentions=True)
    t, n_kv = state.length, model.config.num_key_value_heads
    for ours, ours_last, a in zip(full, last, out.attentions):
        b, hq, n, _ = a.shape
        theirs = a.view(b, n_kv, hq // n_kv, n, -1).sum(dim=2)[..., :t] * enc.mask[:, None, :, None]
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ours_last, ours[:, :, -4:], atol=1e-6, rtol=1e-5)
