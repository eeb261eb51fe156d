"""Baseline: one agent answers the question: with the harness's own prompt, or a one-agent team (--agents; an
imported reference's single-agent prompt)."""
from __future__ import annotations

from kv_state import KVState
from methods import MethodConfig, agent_record, answer_for, item_record, trace_fields
from prompts import agent_prompt, baseline_prompt
from teams import DEFAULT_SYSTEM
from utils import item_generator, now


def run_batch(wrapper, items, cfg: MethodConfig) -> list[dict]:
    agent = cfg.team.agents[0] if cfg.team is not None else None
    if agent is None:
        users = [baseline_prompt(it.question, answer_for(it, cfg)) for it in items]
        name, role, system = "Solver", "solver", DEFAULT_SYSTEM
    else:
        users = [agent_prompt(agent, "text", it.question, answer_for(it, cfg)) for it in items]
        name, role, system = agent.name, agent.role, agent.system
    enc = wrapper.encode([wrapper.render(u, system=system) for u in users])
    state = KVState.empty(len(items), wrapper.device)
    t0 = now(wrapper.device)
    dec = wrapper.generate(state, enc, cfg.max_new_tokens, cfg.temperature, cfg.top_p,
                           [item_generator(cfg.seed, it.index) for it in items], prefix_key="baseline")
    share = (now(wrapper.device) - t0) / len(items)  # a batch's time, shared equally by its items
    kv_out = list(zip(state.valid_tokens(), state.row_nbytes()))
    records = []
    for i, it in enumerate(items):
        rec = agent_record(name, role, enc.lengths()[i], 0, len(dec.tokens[i]), (0, 0), kv_out[i], share,
                           dec.texts[i], cfg.model_name)
        if cfg.trace:
            rec.update(trace_fields(wrapper, enc, i, users[i], system, dec.tokens[i]))
        records.append(item_record(it, dec.texts[i], [rec], cfg))
    return records
