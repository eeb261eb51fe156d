"""LatentMAS: agents share one growing KV cache; all but the last think in latent steps, the last one writes.

With a compressor the shared cache is pruned at hand-offs (before every non-first agent, or only before the
judger). With fidelity on, the same team also runs uncompressed, and the compressed judger is scored against the
uncompressed one. Hierarchical here changes the prompts only (the cache still chains), as in the reference code.
"""
from __future__ import annotations

import torch

from kv_state import KVState, extend, rollback
from methods import MethodConfig, agent_record, answer_for, item_record
from prompts import DEFAULT_TEAM, team_prompts
from utils import item_generator, now

THINK_SUFFIX = "<think>\n"


def _encode_team(wrapper, items, cfg: MethodConfig, team) -> list:
    suffix = THINK_SUFFIX if cfg.think else ""
    per_item = [team_prompts("latent", cfg.prompt, team, it.question, answer_for(it, cfg), cfg.stacked_prompts)
                for it in items]
    return [wrapper.encode([wrapper.render(p[k], suffix=suffix) for p in per_item]) for k in range(len(team))]


def _kv(state: KVState) -> list[tuple[int, int]]:
    return list(zip(state.valid_tokens(), state.row_nbytes()))


def _think(wrapper, items, cfg: MethodConfig, team, encs, compressor):
    """Run every agent but the last; compress at hand-offs (the judger's included). Returns the state the judger
    reads and, per agent, its measurements (per row)."""
    n = len(items)
    state = KVState.empty(n, wrapper.device)
    kv_gens = [item_generator(cfg.seed, it.index, "kv") for it in items]
    steps = []
    for k in range(len(team)):
        before = _kv(state)
        t0 = now(wrapper.device)
        if compressor is not None and compressor.applies(k, len(team)):
            compressor(wrapper, state, encs[k], kv_gens)
        t_comp = now(wrapper.device) - t0
        after = _kv(state)
        if k < len(team) - 1:
            wrapper.prefill_and_think(state, encs[k], cfg.latent_steps)
        steps.append({"before": before, "in": after, "compress_s": t_comp / n,
                      "think_s": (now(wrapper.device) - t0 - t_comp) / n, "out": _kv(state)})
    return state, steps


def _teacher_forced_logprobs(wrapper, state: KVState, enc, tokens: list[list[int]]) -> torch.Tensor:
    """Log-probabilities (B, M, V) the judger gives to each next token of `tokens` (right-padded to M), computed in
    one pass on top of `state` and rolled back."""
    m = max(len(t) for t in tokens)
    pad = wrapper.tokenizer.pad_token_id
    prev = torch.tensor([(t[:-1] + [pad] * (m - len(t)))[: m - 1] for t in tokens], device=wrapper.device)
    prev_mask = torch.tensor([[1] * (len(t) - 1) + [0] * (m - len(t)) for t in tokens], device=wrapper.device)
    ids, mask = enc.ids, enc.mask
    if m > 1:
        ids, mask = torch.cat([ids, prev], dim=1), torch.cat([mask, prev_mask[:, : m - 1]], dim=1)
    with rollback(state):
        logits = extend(wrapper.model, state, input_ids=ids, new_mask=mask, want="all_logits")
    return torch.log_softmax(logits[:, enc.ids.shape[1] - 1:].float(), dim=-1)


def _fidelity(wrapper, items, cfg, team, encs, state: KVState) -> list[dict]:
    """How far the compressed judger (on `state`) is from the uncompressed one, per item: top-1 agreement and mean
    KL(full || compressed) of next-token distributions, teacher-forced on the full-cache greedy output."""
    ref_state, _ = _think(wrapper, items, cfg, team, encs, None)
    with rollback(ref_state):
        ref = wrapper.generate(ref_state, encs[-1], cfg.max_new_tokens, temperature=0.0)
    tokens = [t or [wrapper.tokenizer.pad_token_id] for t in ref.tokens]
    lp_full = _teacher_forced_logprobs(wrapper, ref_state, encs[-1], tokens)
    lp_comp = _teacher_forced_logprobs(wrapper, state, encs[-1], tokens)
    out = []
    for i, t in enumerate(tokens):
        n = len(t)
        target = torch.tensor(t, device=lp_comp.device)
        kl = (lp_full[i, :n].exp() * (lp_full[i, :n] - lp_comp[i, :n])).sum(-1)
        agree = (lp_comp[i, :n].argmax(-1) == target).float()
        out.append({"agreement": round(agree.mean().item(), 4), "kl": round(kl.mean().item(), 6),
                    "ref_output": ref.texts[i], "ref_tokens": len(ref.tokens[i])})
    return out


def run_batch(wrapper, items, cfg: MethodConfig, team=DEFAULT_TEAM) -> list[dict]:
    n = len(items)
    encs = _encode_team(wrapper, items, cfg, team)
    state, steps = _think(wrapper, items, cfg, team, encs, cfg.compressor)
    fidelity = _fidelity(wrapper, items, cfg, team, encs, state) if cfg.fidelity else None
    t0 = now(wrapper.device)
    dec = wrapper.generate(state, encs[-1], cfg.max_new_tokens, cfg.temperature, cfg.top_p,
                           [item_generator(cfg.seed, it.index) for it in items])
    steps[-1]["think_s"] = (now(wrapper.device) - t0) / n
    steps[-1]["out"] = _kv(state)

    records = []
    for i, it in enumerate(items):
        agents, full = [], 0
        for k, agent in enumerate(team):
            s, final = steps[k], k == len(team) - 1
            rec = agent_record(agent.name, agent.role, encs[k].lengths()[i], 0 if final else cfg.latent_steps,
                               len(dec.tokens[i]) if final else 0, s["in"][i], s["out"][i],
                               s["compress_s"] + s["think_s"], dec.texts[i] if final else None)
            if cfg.compressor is not None:
                rec.update(kv_tokens_full=full, kv_tokens_before=s["before"][i][0],
                           kv_bytes_before=s["before"][i][1], compress_time_s=round(s["compress_s"], 4))
            full += rec["prompt_tokens"] + rec["latent_steps"]
            agents.append(rec)
        record = item_record(it, dec.texts[i], agents, cfg)
        if cfg.compressor is not None:
            judger = agents[-1]
            record["kv_kept_share"] = round(judger["kv_tokens_in"] / max(judger["kv_tokens_full"], 1), 4)
        if fidelity is not None:
            record["fidelity"] = dict(fidelity[i], output_match=fidelity[i]["ref_output"] == dec.texts[i])
        records.append(record)
    return records
