"""The latents-only transfer policy: earlier agents hand on their latent-step entries, their prompt entries dropped.

Checked on the tiny Qwen3: which entries go on (exactly the latents with --kv_protect latents, the newest latents
under a small budget, the latents first under a larger one), per row in a batch whose rows hold different numbers
of latents (batched == one by one), and fidelity measured like for any policy. The shared policy matrix
(tests/test_compression.py, tests/test_families.py) runs it too."""
from __future__ import annotations

import pytest
import torch

import registry
from compression import make_policy
from data import Item
from kv_state import LATENT, PROMPT, KVState, extend
from methods import MethodConfig, get_method
from models import ModelWrapper
from tests.conftest import compressor, settings

QUESTIONS = ["How many apples are left if each day the team sells 3 of 17?", "What is the total?",
             "If she sells 9 eggs each day for 2 dollars each, how many dollars is that?"]


def _wrapper(tiny):
    model, tok, dev = tiny
    return ModelWrapper(model, tok, dev)


def _think(w, state, questions, role, steps):
    w.prefill_and_think(state, w.encode([w.render(f"{role}: {q}") for q in questions]), steps)


def _state(w, questions, steps=3):
    state = KVState.empty(len(questions), w.device)
    for role in ("plan", "check"):
        _think(w, state, questions, role, steps)
    return state


def _next(w, questions):
    return w.encode([w.render(f"solve: {q}") for q in questions])


def _gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def _entries(state, b):
    """(position, kind) of row b's real entries, in cache order."""
    cols = state.mask[b] == 1
    return list(zip(state.pos[0, b, 0][cols].tolist(), state.kinds[0, b, 0][cols].tolist()))


def _expected(before, budget, min_keep):
    """What latents-only keeps of a row: the `min_keep` newest entries (protected, whatever their kind), then the
    best of the rest by (is latent, position) up to `budget`, back in cache order."""
    protected = before[len(before) - min_keep:]
    rest = sorted(before[:len(before) - min_keep], key=lambda e: (e[1] == LATENT, e[0]), reverse=True)
    kept = set(protected) | set(rest[:max(budget - len(protected), 0)])
    return [e for e in before if e in kept]


def test_is_registered_and_accepted_by_the_cli():
    from compression import CLASSES, LatentsOnly

    assert "latents-only" in registry.POLICIES and CLASSES["latents-only"] is LatentsOnly
    assert type(make_policy("latents-only")) is LatentsOnly
    # the CLI takes it (a refused flag would exit 2)
    settings(["--method", "latent_mas", "--kv_policy", "latents-only", "--kv_protect", "latents", "--kv_keep", "0.01"])


def test_protect_latents_with_a_small_keep_hands_on_exactly_the_latents(tiny):
    w = _wrapper(tiny)
    state = _state(w, QUESTIONS, steps=3)
    before = [_entries(state, b) for b in range(3)]
    comp = compressor("latents-only", kv_keep=0.01, kv_min_keep=2, kv_protect="latents")
    comp(w, state, _next(w, QUESTIONS), _gens([0, 1, 2]))
    for b in range(3):
        after = _entries(state, b)
        assert after == [e for e in before[b] if e[1] == LATENT]  # every latent, nothing else, in cache order
        assert len(after) == 6
    assert state.kind_counts(LATENT) == [6, 6, 6] and state.mask.sum(1).tolist() == [6, 6, 6]


@pytest.mark.parametrize("keep, min_keep", [(0.01, 3), (0.01, 4), (0.3, 2), (0.6, 2)])
def test_latents_go_first_whatever_the_budget(tiny, keep, min_keep):
    """Below the latent count: the newest latents only; above it: every latent, then the newest other entries. The
    min_keep newest entries are kept by every policy: more of them than the last agent's latent steps (4 > 3) let
    its last prompt entry through."""
    w = _wrapper(tiny)
    state = _state(w, QUESTIONS, steps=3)
    before = [_entries(state, b) for b in range(3)]
    comp = compressor("latents-only", kv_keep=keep, kv_min_keep=min_keep)
    budgets = comp.budgets(state).tolist()
    comp(w, state, _next(w, QUESTIONS), _gens([0, 1, 2]))
    for b in range(3):
        assert _entries(state, b) == _expected(before[b], budgets[b], min_keep)
    kinds = [[k for _, k in _entries(state, b)] for b in range(3)]
    if keep == 0.01:  # the budget is min_keep: the last agent's latents (and its last prompt entry if min_keep is 4)
        assert kinds == [[LATENT] * 3 if min_keep == 3 else [PROMPT] + [LATENT] * 3] * 3
    else:  # every latent, then the newest prompt entries
        assert state.kind_counts(LATENT) == [6, 6, 6] and all(len(k) > 6 for k in kinds)


def test_batched_equals_one_by_one_with_rows_of_different_latent_counts(tiny):
    """A random prune first leaves each row a different number of latents (and of entries); a third agent thinks;
    then latents-only picks per row what the row picks alone, and the next agent's logits agree."""
    w = _wrapper(tiny)
    seeds = [3, 4, 5]

    def build(questions, gens):
        state = _state(w, questions, steps=3)
        compressor("random", kv_keep=0.5, kv_min_keep=1)(w, state, _next(w, questions), gens)
        _think(w, state, questions, "refine", 2)
        return state

    for comp in (compressor("latents-only", kv_keep=0.3, kv_min_keep=2),
                 compressor("latents-only", kv_keep=0.01, kv_min_keep=2, kv_protect="latents")):
        batch = build(QUESTIONS, _gens(seeds))
        latents = batch.kind_counts(LATENT)
        assert len(set(latents)) > 1 and len(set(batch.mask.sum(1).tolist())) > 1  # rows really differ
        comp(w, batch, _next(w, QUESTIONS), _gens(seeds))
        kept = [_entries(batch, b) for b in range(len(QUESTIONS))]
        kept_latents = batch.kind_counts(LATENT)
        logits = extend(w.model, batch, input_ids=_next(w, QUESTIONS).ids, new_mask=_next(w, QUESTIONS).mask,
                        want="logits")
        for b, q in enumerate(QUESTIONS):
            one = build([q], _gens([seeds[b]]))
            assert one.kind_counts(LATENT) == [latents[b]]
            comp(w, one, _next(w, [q]), _gens([seeds[b]]))
            assert _entries(one, 0) == kept[b]
            alone = extend(w.model, one, input_ids=_next(w, [q]).ids, want="logits")
            assert (alone[0] - logits[b]).abs().max().item() < 1e-4
        if comp.settings.kv_protect == "latents":
            assert kept_latents == latents and [len(k) for k in kept] == latents  # exactly the latents


def test_fidelity_is_measured_like_for_any_policy(tiny):
    w = _wrapper(tiny)
    items = [Item(i, q, "1", {}) for i, q in enumerate(QUESTIONS[:2])]
    cfg = MethodConfig(answer_type="number", max_new_tokens=6, temperature=0.0, top_p=1.0, seed=0, latent_steps=3,
                       fidelity=True,
                       compressor=compressor("latents-only", kv_keep=0.01, kv_min_keep=2, kv_protect="latents"))
    records = get_method("latent_mas")(w, items, cfg)
    for rec in records:
        planner, critic, refiner, judger = rec["agents"]
        assert critic["kv_tokens_in"] == 3 and refiner["kv_tokens_in"] == 6  # only the latents went on
        assert judger["kv_tokens_in"] == 9 and judger["kv_tokens_full"] > 9
        assert 0 <= rec["fidelity"]["agreement"] <= 1 and rec["fidelity"]["kl"] >= 0
        assert rec["kv_kept_share"] == pytest.approx(9 / judger["kv_tokens_full"], abs=1e-4)
