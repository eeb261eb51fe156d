"""LatentMAS: agents share one KV cache; latent agents think in latent steps, the last agent writes the answer.

Flows (registry.TOPOLOGIES): in a chain every agent works on the cache of all earlier agents (the paper); in a
parallel team each worker starts from an empty cache and the last agent reads their caches side by side
(kv_state.concat). An agent with mode "text" writes text onto the shared cache instead of thinking in latents.
With a compressor the cache is pruned at hand-offs (before every agent that inherits a cache, or only before the
last). With fidelity on, the same team also runs uncompressed and the compressed last agent is scored against it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kv_state import KVState, concat, extend, rollback
from methods import MethodConfig, agent_record, answer_for, item_record
from prompts import team_prompts
from utils import item_generator, now

THINK_SUFFIX = "<think>\n"


def _encode_team(wrapper, items, cfg: MethodConfig, team) -> list:
    suffix = THINK_SUFFIX if cfg.think else ""
    per_item = [team_prompts("latent", team, it.question, answer_for(it, cfg), cfg.stacked_prompts) for it in items]
    return [wrapper.encode([wrapper.render(p[k], system=agent.system, suffix=suffix) for p in per_item])
            for k, agent in enumerate(team.agents)]


def _kv(state: KVState) -> list[tuple[int, int]]:
    return list(zip(state.valid_tokens(), state.row_nbytes()))


def _work(wrapper, items, cfg: MethodConfig, agent, k: int, state: KVState, enc, trace: dict | None = None):
    """One non-final agent on `state`: latent steps, or text written onto the cache. Returns the Decoded text."""
    if agent.mode == "text":
        gens = [item_generator(cfg.seed, it.index, f"agent{k}") for it in items]
        return wrapper.generate(state, enc, cfg.max_new_tokens, cfg.temperature, cfg.top_p, gens,
                                prefix_key=f"agent{k}")
    wrapper.prefill_and_think(state, enc, cfg.latent_steps, trace, prefix_key=f"agent{k}")
    return None


def _think(wrapper, items, cfg: MethodConfig, team, encs, compressor, observer=None):
    """Run every agent but the last and compress at hand-offs (the last agent's included). Returns the state the
    last agent reads and, per agent, its measurements (per row)."""
    n, agents = len(items), team.agents
    kv_gens = [item_generator(cfg.seed, it.index, "kv") for it in items]
    steps, workers = [], []
    state = KVState.empty(n, wrapper.device)
    if cfg.flow == "chain":  # the whole team's cache, sized once: no agent's append copies it
        state.reserve(sum(e.ids.shape[1] for e in encs) + cfg.max_new_tokens
                      + sum(cfg.max_new_tokens if a.mode == "text" else cfg.latent_steps for a in agents[:-1]))
    for k, agent in enumerate(agents):
        final = k == len(agents) - 1
        if cfg.flow == "parallel":
            state = concat(workers) if final and workers else KVState.empty(n, wrapper.device)
        before = _kv(state)
        look, kept, trace = (observer.look(wrapper, state, encs[k]), None, {}) if observer else (None, None, None)
        t0 = now(wrapper.device)
        if compressor is not None and compressor.applies(k, len(agents)):
            kept = compressor(wrapper, state, encs[k], kv_gens)
        t_comp = now(wrapper.device) - t0
        after = _kv(state)
        dec = None if final else _work(wrapper, items, cfg, agent, k, state, encs[k], trace)
        if cfg.flow == "parallel" and not final:
            workers.append(state)
        steps.append({"before": before, "in": after, "compress_s": t_comp / n, "dec": dec,
                      "think_s": (now(wrapper.device) - t0 - t_comp) / n, "out": _kv(state)})
        if observer:  # outside the timed region: heatmap of the hand-off, latents of the agent (observe.py)
            observer.record(items, agents, k, look, kept, trace)
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


@dataclass
class Reference:
    """The uncompressed team's judger on the same items: its greedy output and its next-token log-probabilities."""

    texts: list[str]
    tokens: list[list[int]]
    logprobs: torch.Tensor  # (B, M, V)


def reference(wrapper, items, cfg: MethodConfig, encs=None) -> Reference:
    team = cfg.get_team()
    encs = encs or _encode_team(wrapper, items, cfg, team)
    state, _ = _think(wrapper, items, cfg, team, encs, None)
    with rollback(state):
        ref = wrapper.generate(state, encs[-1], cfg.max_new_tokens, temperature=0.0)
    tokens = [t or [wrapper.tokenizer.pad_token_id] for t in ref.tokens]
    return Reference(ref.texts, tokens, _teacher_forced_logprobs(wrapper, state, encs[-1], tokens))


def _fidelity(wrapper, ref: Reference, state: KVState, enc) -> list[dict]:
    """How far the compressed judger (on `state`) is from the uncompressed one, per item: top-1 agreement and mean
    KL(full || compressed) of next-token distributions, teacher-forced on the full-cache greedy output."""
    lp_comp = _teacher_forced_logprobs(wrapper, state, enc, ref.tokens)
    out = []
    for i, t in enumerate(ref.tokens):
        n = len(t)
        lp_full = ref.logprobs[i, :n]
        kl = (lp_full.exp() * (lp_full - lp_comp[i, :n])).sum(-1)
        agree = (lp_comp[i, :n].argmax(-1) == torch.tensor(t, device=lp_comp.device)).float()
        out.append({"agreement": round(agree.mean().item(), 4), "kl": round(kl.mean().item(), 6),
                    "ref_output": ref.texts[i], "ref_tokens": n})
    return out


def run_batch(wrapper, items, cfg: MethodConfig, ref: Reference | None = None) -> list[dict]:
    """`ref`: a precomputed `reference` for these items (benchmarks reuse one across many compression settings)."""
    team = cfg.get_team()
    n = len(items)
    encs = _encode_team(wrapper, items, cfg, team)
    state, steps = _think(wrapper, items, cfg, team, encs, cfg.compressor, cfg.observer)
    fidelity = None
    if cfg.fidelity or ref is not None:
        fidelity = _fidelity(wrapper, ref or reference(wrapper, items, cfg, encs), state, encs[-1])
    t0 = now(wrapper.device)
    steps[-1]["dec"] = wrapper.generate(state, encs[-1], cfg.max_new_tokens, cfg.temperature, cfg.top_p,
                                        [item_generator(cfg.seed, it.index) for it in items])
    steps[-1]["think_s"] = (now(wrapper.device) - t0) / n
    steps[-1]["out"] = _kv(state)
    final_text = steps[-1]["dec"].texts

    records = []
    for i, it in enumerate(items):
        agents, added = [], 0  # entries earlier agents added: what an agent would get with no compression
        for k, agent in enumerate(team.agents):
            s, dec = steps[k], steps[k]["dec"]
            latent = dec is None
            full = added if cfg.flow == "chain" or k == len(team.agents) - 1 else 0
            rec = agent_record(agent.name, agent.role, encs[k].lengths()[i], cfg.latent_steps if latent else 0,
                               0 if latent else len(dec.tokens[i]), s["in"][i], s["out"][i],
                               s["compress_s"] + s["think_s"], None if latent else dec.texts[i])
            if cfg.compressor is not None:
                rec.update(kv_tokens_full=full, kv_tokens_before=s["before"][i][0],
                           kv_bytes_before=s["before"][i][1], compress_time_s=round(s["compress_s"], 4))
            added += s["out"][i][0] - s["in"][i][0]
            agents.append(rec)
        record = item_record(it, final_text[i], agents, cfg)
        if cfg.compressor is not None:
            judger = agents[-1]
            record["kv_kept_share"] = round(judger["kv_tokens_in"] / max(judger["kv_tokens_full"], 1), 4)
        if fidelity is not None:
            record["fidelity"] = dict(fidelity[i], output_match=fidelity[i]["ref_output"] == final_text[i])
        records.append(record)
    return records
