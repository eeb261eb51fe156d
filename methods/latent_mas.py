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

from kv_state import LATENT, TEXT, KVState, concat, extend, keep_last, rollback
from methods import MethodConfig, agent_record, answer_for, item_record, trace_fields
from prompts import team_prompts
from teams import senders
from utils import item_generator, now


def _user_prompts(items, cfg: MethodConfig, team) -> list[list[str]]:
    """Per item, every agent's user prompt."""
    return [team_prompts("latent", team, it.question, answer_for(it, cfg), cfg.include_old_prompts) for it in items]


def _encode_team(wrapper, items, cfg: MethodConfig, team) -> list:
    per_item = _user_prompts(items, cfg, team)
    wrappers, _ = cfg.agent_models(wrapper, len(team.agents))
    return [w.encode([w.render(p[k], system=agent.system, suffix=cfg.think or "") for p in per_item])
            for k, (agent, w) in enumerate(zip(team.agents, wrappers))]


def _kept_entries(order: torch.Tensor, keep: torch.Tensor, mask_before: torch.Tensor, scope: str,
                  shape: tuple[int, int]) -> list:
    """--trace: per row, the entries a compression kept, as indices among the row's real entries before it (0: the
    oldest), so that padding and batch size do not change them: a list (scope shared), one list per layer (layer),
    or per layer and KV head (head)."""
    rank = (mask_before.cumsum(dim=1) - 1).cpu()
    order, keep = order.cpu(), keep.cpu().bool()
    layers = range(shape[0] if scope != "shared" else 1)  # (layers, KV heads) of the cache
    heads = range(shape[1] if scope == "head" else 1)
    rows = []
    for b in range(order.shape[1]):
        per = [[rank[b, order[li if order.shape[0] > 1 else 0, b, h if order.shape[2] > 1 else 0][keep[b]]].tolist()
                for h in heads] for li in layers]
        rows.append(per[0][0] if scope == "shared" else [p[0] for p in per] if scope == "layer" else per)
    return rows


def _cut_handoff(wrapper, cfg: MethodConfig, state: KVState, added: list[int]) -> None:
    """The reference code's hand-off switches, after a non-final agent in a chain: latent_only keeps the last
    latent_steps entries, sequential_info_only the agent's own (`added` per row)."""
    counts = [cfg.latent_steps] * len(added) if cfg.handoff == "latent_only" else added
    keep_last(wrapper.model, state, counts, cfg.kv_positions)


def _kv(state: KVState) -> list[tuple[int, int]]:
    return list(zip(state.valid_tokens(), state.row_nbytes()))


def _work(wrapper, items, cfg: MethodConfig, agent, k: int, state: KVState, enc, trace: dict | None = None):
    """One non-final agent on `state`: latent steps, or text written onto the cache. Returns (the Decoded text or
    None, the latent vectors fed back)."""
    if agent.mode == "text":
        gens = [item_generator(cfg.seed, it.index, f"agent{k}") for it in items]
        return wrapper.generate(state, enc, cfg.max_new_tokens, cfg.temperature, cfg.top_p, gens,
                                prefix_key=f"agent{k}"), []
    return None, wrapper.prefill_and_think(state, enc, cfg.latent_steps, trace, prefix_key=f"agent{k}")


def _hand_over(items, cfg: MethodConfig, team, j: int, product: tuple, receiver, state: KVState,
               latent_map=None) -> list[int]:
    """Agent j's turn, computed on another model, replayed on the receiver's `state`: j's prompt as the receiver's
    tokens, then what j produced: its text as the receiver's tokens, or its latent vectors mapped into the receiver's
    input-embedding space (latent_map). Returns the entries each row gained."""
    dec, latents = product
    before = state.valid_tokens()
    agent, suffix = team.agents[j], cfg.think or ""
    prompts = [team_prompts("latent", team, it.question, answer_for(it, cfg), cfg.include_old_prompts)[j]
               for it in items]
    enc = receiver.encode([receiver.render(p, system=agent.system, suffix=suffix) for p in prompts])
    text = receiver.encode(dec.texts) if dec is not None else None
    more = text.ids.shape[1] if text is not None else len(latents)
    receiver.prefill(state, enc, "hidden", prefix_key=f"handoff{j}", room=more)
    if text is not None and text.ids.shape[1]:
        extend(receiver.model, state, input_ids=text.ids, new_mask=text.mask, kind=TEXT)
    elif dec is None and latents:
        if latent_map is None:
            raise ValueError(f"agent {agent.name}'s latents cannot reach another model without a latent map")
        extend(receiver.model, state, inputs_embeds=torch.stack([latent_map(v) for v in latents], dim=1), kind=LATENT)
    return [a - b for a, b in zip(state.valid_tokens(), before)]


def _think(wrapper, items, cfg: MethodConfig, team, encs, compressor, observer=None):
    """Run every agent but the last and compress at hand-offs (the last agent's included). Returns the state the
    last agent reads and, per agent, its measurements (per row).

    Agents on one model share that model's cache (in a chain: one state per model). Where the next agent runs on
    another model (teams.senders), the sender's turn is replayed on the receiver's cache first (_hand_over)."""
    n, agents = len(items), team.agents
    wrappers, names = cfg.agent_models(wrapper, len(agents))
    into: dict[int, list[int]] = {}
    for j, k in senders(tuple(names), cfg.flow):
        into.setdefault(k, []).append(j)
    kv_gens = [item_generator(cfg.seed, it.index, "kv") for it in items]
    steps, workers, products = [], [], {}
    states = {}  # chain: model name -> the cache its agents share
    if cfg.flow == "chain":  # each model's cache, sized once: no agent's append copies it
        plan: dict[str, int] = {}
        for k in range(len(agents)):  # the model's own agents' prompts and work, and the turns handed to them
            turns = (*into.get(k, ()), k)
            plan[names[k]] = plan.get(names[k], 0) + sum(encs[j].ids.shape[1] for j in turns) + sum(
                cfg.max_new_tokens if agents[j].mode == "text" or j == len(agents) - 1 else cfg.latent_steps
                for j in turns)
        for k in range(len(agents)):
            if names[k] not in states:
                states[names[k]] = KVState.empty(n, wrappers[k].device)
                states[names[k]].reserve(plan[names[k]])
    for k, agent in enumerate(agents):
        final, w = k == len(agents) - 1, wrappers[k]
        t0 = now(w.device)
        handoffs = []
        if cfg.flow == "parallel":
            state = KVState.empty(n, w.device)
            if final and workers:
                blocks = []
                for j, block in enumerate(workers):
                    if j in into.get(k, ()):
                        block = KVState.empty(n, w.device)
                        handoffs.append((j, _hand_over(items, cfg, team, j, products[j], w, block,
                                                       _map(cfg, j, k))))
                    blocks.append(block)
                state = concat(blocks)
        else:
            state = states[names[k]]
            for j in into.get(k, ()):
                handoffs.append((j, _hand_over(items, cfg, team, j, products[j], w, state, _map(cfg, j, k))))
        t_hand = now(w.device) - t0
        if final and cfg.latent_steps == 0 and cfg.zero_steps_judger == "empty":
            state = KVState.empty(n, w.device)  # the public LatentMAS code: no latent steps, no cache
        before = _kv(state)
        look, kept, trace = (observer.look(w, state, encs[k]), None, {}) if observer else (None, None, None)
        mask_before = state.mask.clone() if cfg.trace else None
        t0 = now(w.device)
        if compressor is not None and compressor.applies(k, len(agents)):
            kept = compressor(w, state, encs[k], kv_gens)
        t_comp = now(w.device) - t0
        after = _kv(state)
        dec, latents = (None, []) if final else _work(w, items, cfg, agent, k, state, encs[k], trace)
        products[k] = (dec, latents)
        if cfg.flow == "parallel" and not final:
            workers.append(state)
        steps.append({"before": before, "in": after, "compress_s": t_comp / n, "dec": dec,
                      "think_s": (now(w.device) - t0 - t_comp) / n, "out": _kv(state), "handoff_s": t_hand / n,
                      "handoffs": handoffs})
        if cfg.trace and kept is not None:
            kv = state.layer_tensors()
            steps[-1]["kept"] = _kept_entries(*kept, mask_before, compressor.settings.kv_scope,
                                              (len(kv), kv[0][0].shape[1]))
        if cfg.handoff != "all" and cfg.flow == "chain" and not final:
            _cut_handoff(w, cfg, state, [o[0] - i[0] for o, i in zip(steps[-1]["out"], after)])
        if observer:  # outside the timed region: heatmap of the hand-off, latents of the agent (observe.py)
            observer.record(items, agents, k, look, kept, trace)
    return state, steps


def _map(cfg: MethodConfig, sender: int, receiver: int):
    """The latent map of a latent sender's hand-off to another model (None for a text sender)."""
    models = cfg.models
    return models.maps.get((models.names[sender], models.names[receiver])) if models is not None else None


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
    wrapper = cfg.agent_models(wrapper, len(team.agents))[0][-1]  # the judger's model
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
    wrappers, names = cfg.agent_models(wrapper, len(team.agents))
    judger, last = wrappers[-1], len(team.agents) - 1
    fidelity = None
    if cfg.fidelity or ref is not None:
        fidelity = _fidelity(judger, ref or reference(wrapper, items, cfg, encs), state, encs[-1])
    t0 = now(judger.device)
    steps[-1]["dec"] = judger.generate(state, encs[-1], cfg.max_new_tokens, cfg.temperature, cfg.top_p,
                                       [item_generator(cfg.seed, it.index) for it in items])
    steps[-1]["think_s"] = (now(judger.device) - t0) / n
    steps[-1]["out"] = _kv(state)
    final_text = steps[-1]["dec"].texts

    users = _user_prompts(items, cfg, team) if cfg.trace else None
    records = []
    for i, it in enumerate(items):
        # entries each model's cache would hold with no compression: what its earlier agents and hand-offs added
        agents, added = [], {}
        for k, agent in enumerate(team.agents):
            s, dec = steps[k], steps[k]["dec"]
            latent = dec is None
            handed = sum(h[1][i] for h in s["handoffs"])
            if cfg.flow == "chain":
                full = added.get(names[k], 0) + handed
            else:  # the workers start empty; the last agent reads its own model's workers' blocks and the hand-offs
                full = handed + (sum(steps[j]["out"][i][0] for j in range(last) if names[j] == names[k])
                                 if k == last else 0)
            rec = agent_record(agent.name, agent.role, encs[k].lengths()[i], cfg.latent_steps if latent else 0,
                               0 if latent else len(dec.tokens[i]), s["in"][i], s["out"][i],
                               s["compress_s"] + s["think_s"] + s["handoff_s"], None if latent else dec.texts[i],
                               names[k])
            if cfg.trace:
                rec.update(trace_fields(wrappers[k], encs[k], i, users[i][k], agent.system,
                                        None if latent else dec.tokens[i]))
                if "kept" in s:
                    rec["kept"] = s["kept"][i]
            if s["handoffs"]:
                rec["handoffs"] = [{"from": team.agents[j].name, "model": names[j],
                                    "as": "text" if steps[j]["dec"] is not None else "latent-map",
                                    "kv_tokens": entries[i]} for j, entries in s["handoffs"]]
            if cfg.compressor is not None:
                rec.update(kv_tokens_full=full, kv_tokens_before=s["before"][i][0],
                           kv_bytes_before=s["before"][i][1], compress_time_s=round(s["compress_s"], 4))
            added[names[k]] = full + s["out"][i][0] - s["in"][i][0]
            agents.append(rec)
        record = item_record(it, final_text[i], agents, cfg)
        if cfg.compressor is not None:
            judger = agents[-1]
            record["kv_kept_share"] = round(judger["kv_tokens_in"] / max(judger["kv_tokens_full"], 1), 4)
        if fidelity is not None:
            record["fidelity"] = dict(fidelity[i], output_match=fidelity[i]["ref_output"] == final_text[i])
        records.append(record)
    return records
