"""Agent teams as data: shipped team files, custom teams, real hierarchical latent collaboration, text-first
hybrids, and bad team files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import run
from data import Item
from kv_state import TEXT
from methods import MethodConfig, get_method, latent_mas
from models import ModelWrapper
from prompts import agent_prompt, baseline_prompt, team_prompts
from teams import TEAMS_DIR, TeamError, default_team, load_team, parse_team, with_first_agent_text
from tests.conftest import ROOT, compressor

GOLDEN = json.loads((ROOT / "tests" / "data" / "prompts_before_teams.json").read_text())
QUESTIONS = ["How many apples are left if each day the team sells 3 of 17?", "What is the total?",
             "If she sells 9 eggs each day for 2 dollars each, how many dollars is that?"]


def _cfg(**kw):
    base = dict(answer_type="number", max_new_tokens=8, temperature=0.0, top_p=1.0, seed=0, latent_steps=2)
    base.update(kw)
    return MethodConfig(**base)


def _items(n=1):
    return [Item(i, q, "1", {}) for i, q in enumerate(QUESTIONS[:n])]


def _w(tiny):
    return ModelWrapper(*tiny)


@pytest.mark.parametrize("topology", ["sequential", "hierarchical"])
@pytest.mark.parametrize("family", ["latent", "text"])
def test_shipped_team_files_reproduce_the_built_in_prompts_bit_for_bit(topology, family):
    """The prompts the code produced before teams became data (saved in tests/data) come out of the team files."""
    team, q, ans = default_team(topology), GOLDEN["question"], GOLDEN["answer"]
    assert team_prompts(family, team, q, ans) == GOLDEN[f"{family}/{topology}/stacked=False"]
    ctx = "[Planner]:\nplan\n\n"
    assert [agent_prompt(a, family, q, ans, ctx) for a in team.agents] == GOLDEN[f"{family}/{topology}/context"]
    if (family, topology) == ("latent", "sequential"):
        assert team_prompts(family, team, q, ans, stacked=True) == GOLDEN["latent/sequential/stacked=True"]
    assert baseline_prompt(q, ans) == GOLDEN["baseline"]


def test_every_shipped_team_file_loads():
    files = sorted(p for p in TEAMS_DIR.iterdir() if p.suffix in (".json", ".yaml", ".yml"))
    assert {"sequential.json", "hierarchical.json", "science.yaml"} <= {p.name for p in files}
    for p in files:
        assert load_team(p).agents[-1].mode == "text"


def _team(n, modes=None):
    agents = [{"name": f"A{k}", "prompt": f"Agent {k}: think about {{question}}"} for k in range(n - 1)]
    agents.append({"name": "Final", "prompt": "Answer {question}\n{context}\n{answer}"})
    for k, m in (modes or {}).items():
        agents[k]["mode"] = m
    return parse_team({"agents": agents}, "test")


@pytest.mark.parametrize("method", ["latent_mas", "text_mas"])
def test_two_and_five_agent_teams_run_end_to_end(tiny, method):
    w = _w(tiny)
    for team in (_team(2), load_team(TEAMS_DIR / "science.yaml")):
        recs = get_method(method)(w, _items(2), _cfg(team=team))
        for r in recs:
            assert [a["name"] for a in r["agents"]] == [a.name for a in team.agents]
            assert r["agents"][-1]["output_tokens"] > 0 and "output" in r["agents"][-1]
        if method == "latent_mas":
            j = recs[0]["agents"][-1]
            assert j["kv_tokens_in"] == sum(a["prompt_tokens"] + a["latent_steps"] for a in recs[0]["agents"][:-1])


def _worker_blocks(w, team, flow):
    """The final agent's cache split into the workers' blocks (batch 1, no padding)."""
    cfg = _cfg(team=team, prompt="hierarchical" if flow == "parallel" else "chain-hierarchical")
    encs = latent_mas._encode_team(w, _items(), cfg, team)
    state, steps = latent_mas._think(w, _items(), cfg, team, encs, None)
    sizes = [s["out"][0][0] - s["in"][0][0] for s in steps[:-1]]
    keys = state.layer_tensors()[-1][0]
    starts = [sum(sizes[:k]) for k in range(len(sizes))]
    return [keys[:, :, a:a + n] for a, n in zip(starts, sizes)], state


def test_hierarchical_workers_are_independent(tiny):
    w = _w(tiny)
    base = default_team("hierarchical")
    raw = base.as_dict()
    raw["agents"][0]["prompt"] = {"latent": "A different first worker: {question} {answer}", "text": "x {question}"}
    changed = parse_team(raw, "changed")
    for flow, independent in (("parallel", True), ("chain", False)):
        a, state = _worker_blocks(w, base, flow)
        b, _ = _worker_blocks(w, changed, flow)
        assert not torch.equal(a[0], b[0]) if a[0].shape == b[0].shape else True
        assert torch.equal(a[1], b[1]) == independent and torch.equal(a[2], b[2]) == independent
        if flow == "parallel":  # every block starts at position 0; the next token follows the longest block
            assert state.pos[0, 0, 0, 0] == 0 and state.next_pos.item() == max(x.shape[2] for x in a)


def test_hierarchical_judger_reads_all_workers_and_compression_applies_at_the_merge(tiny):
    w = _w(tiny)
    rec = get_method("latent_mas")(w, _items(), _cfg(prompt="hierarchical"))[0]
    workers, judger = rec["agents"][:-1], rec["agents"][-1]
    assert all(a["kv_tokens_in"] == 0 for a in workers)
    assert judger["kv_tokens_in"] == sum(a["kv_tokens_out"] for a in workers)
    comp = compressor("knn-bottom", kv_keep=0.5, kv_min_keep=2)
    rec = get_method("latent_mas")(w, _items(), _cfg(prompt="hierarchical", compressor=comp))[0]
    workers, judger = rec["agents"][:-1], rec["agents"][-1]
    assert all(a["kv_tokens_before"] == a["kv_tokens_in"] == 0 for a in workers)
    assert judger["kv_tokens_full"] == judger["kv_tokens_before"] == sum(a["kv_tokens_out"] for a in workers)
    assert judger["kv_tokens_in"] == judger["kv_tokens_full"] // 2


@pytest.mark.parametrize("prompt", ["hierarchical", "chain-hierarchical"])
def test_batched_equals_unbatched_for_hierarchical_and_hybrid(tiny, prompt):
    w = _w(tiny)
    cfg = _cfg(prompt=prompt, team=with_first_agent_text(default_team(prompt)))
    run_batch = get_method("latent_mas")

    def strip(rs):
        return [dict(r, time_s=0, agents=[dict(a, time_s=0, kv_bytes_in=0, kv_bytes_out=0) for a in r["agents"]])
                for r in rs]
    items = _items(3)
    assert strip(run_batch(w, items, cfg)) == strip([run_batch(w, [it], cfg)[0] for it in items])


def test_text_first_hybrid_writes_onto_the_shared_cache(tiny):
    w = _w(tiny)
    team = with_first_agent_text(default_team("sequential"))
    rec = get_method("latent_mas")(w, _items(), _cfg(team=team, max_new_tokens=6))[0]
    planner, critic = rec["agents"][:2]
    assert planner["latent_steps"] == 0 and planner["output_tokens"] > 0 and planner["output"] is not None
    # the planner's written tokens join the cache (the last emitted token is never fed back)
    assert critic["kv_tokens_in"] == planner["prompt_tokens"] + planner["output_tokens"] - 1
    assert rec["generated_tokens"] == planner["output_tokens"] + rec["agents"][-1]["output_tokens"]
    encs = latent_mas._encode_team(w, _items(), _cfg(team=team), team)
    state, _ = latent_mas._think(w, _items(), _cfg(team=team, max_new_tokens=6), team, encs, None)
    assert state.kind_counts(TEXT) == [planner["output_tokens"] - 1]


@pytest.mark.parametrize("content, words", [
    ('{"agents": []}', "non-empty list"),
    ('{"agents": [{"name": "A", "prompt": "Solve {question} using {hint}"}]}',
     "A) prompt[latent]: unknown placeholder(s) {hint}"),
    ('{"agents": [{"name": "A", "prompt": "x {question}"}, {"name": "B", "prompt": "{answer}", "mode": "latent"}]}',
     "(B): the last agent writes the answer"),
    ('{"agents": [{"name": "A", "prompt": "x"}, {"name": "A", "prompt": "y"}]}', "repeated: A"),
    ('{"agents": [{"name": "A", "prompt": "x", "temperature": 1}]}', "unknown field(s) temperature"),
    ('{"agents": [{"name": "A"}]}', "missing prompt"),
    ('{"agents": [\n  {"name": "A", "prompt": "x"},\n  oops\n]}', "line 3"),
    ('{"agents": [{"name": "A", "prompt": "box \\\\boxed{} here"}]}', "literal braces"),
])
def test_bad_team_files_fail_clearly(content, words, tmp_path, capsys):
    path = tmp_path / "team.json"
    path.write_text(content)
    with pytest.raises(TeamError) as e:
        load_team(path)
    assert words in str(e.value) and str(path) in str(e.value)
    with pytest.raises(SystemExit) as e:
        run.main(["--method", "latent_mas", "--agents", str(path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]


def test_yaml_team_and_missing_file(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("agents:\n  - name: Solo\n    prompt: 'Answer {question}. {answer}'\n")
    assert load_team(path).agents[0].name == "Solo"
    with pytest.raises(TeamError, match="cannot read team file"):
        load_team(tmp_path / "nope.json")


def test_cli_team_is_saved_and_reused_on_resume(tiny_model_dir, tmp_path):
    team = tmp_path / "duo.json"
    team.write_text(json.dumps({"agents": [{"name": "Scout", "prompt": "Look at {question}"},
                                           {"name": "Closer", "prompt": "{question} {answer}"}]}))
    args = ["--method", "latent_mas", "--agents", str(team), "--model_name", str(tiny_model_dir), "--max_samples",
            "2", "--max_new_tokens", "4", "--temperature", "0", "--latent_steps", "1", "--output_dir",
            str(tmp_path / "runs")]
    assert run.main(args) == 0
    rd = next((tmp_path / "runs").iterdir())
    assert "duo" in rd.name
    config = json.loads((rd / "config.json").read_text())
    assert [a["name"] for a in config["team"]["agents"]] == ["Scout", "Closer"]
    lines = (rd / "results.jsonl").read_text().splitlines(keepends=True)
    (rd / "results.jsonl").write_text(lines[0])
    team.write_text("not json any more")  # a resume must not depend on the file still being there
    assert run.main(["--resume", str(rd)]) == 0
    recs = [json.loads(x) for x in (rd / "results.jsonl").read_text().splitlines()]
    assert [r["index"] for r in recs] == [0, 1] and [a["name"] for a in recs[1]["agents"]] == ["Scout", "Closer"]


def test_first_agent_text_needs_latent_mas(capsys):
    with pytest.raises(SystemExit) as e:
        run.main(["--method", "text_mas", "--first_agent_text"])
    assert e.value.code == 2 and "latent_mas" in capsys.readouterr().err
    assert Path(TEAMS_DIR / "science.yaml").exists()
