"""Baseline: one agent answers the question."""
from __future__ import annotations

from kv_state import KVState
from methods import MethodConfig, agent_record, answer_for, item_record
from prompts import baseline_prompt
from utils import item_generator, now


def run_batch(wrapper, items, cfg: MethodConfig) -> list[dict]:
    enc = wrapper.encode([wrapper.render(baseline_prompt(it.question, answer_for(it, cfg))) for it in items])
    state = KVState.empty(len(items), wrapper.device)
    t0 = now(wrapper.device)
    dec = wrapper.generate(state, enc, cfg.max_new_tokens, cfg.temperature, cfg.top_p,
                           [item_generator(cfg.seed, it.index) for it in items], prefix_key="baseline")
    share = (now(wrapper.device) - t0) / len(items)  # a batch's time, shared equally by its items
    kv_out = list(zip(state.valid_tokens(), state.row_nbytes()))
    records = []
    for i, it in enumerate(items):
        agent = agent_record("Solver", "solver", enc.lengths()[i], 0, len(dec.tokens[i]), (0, 0), kv_out[i], share,
                             dec.texts[i], cfg.model_name)
        records.append(item_record(it, dec.texts[i], [agent], cfg))
    return records
