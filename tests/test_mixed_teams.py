"""Teams of different models: a `model` per agent, each distinct model loaded once, KV hand-offs within a model,
text or mapped latents across models (latent_map.py), records and summaries per model."""
from __future__ import annotations

import shutil

import pytest
import torch

from data import Item
from latent_map import LatentMap, LatentMapError
from methods import MethodConfig, answer_for, get_method
from models import ModelError, ModelWrapper, load_model, team_models
from prompts import team_prompts
from teams import TeamError, cross_model_plan, parse_team, senders
from tests.conftest import _train_tokenizer

QUESTIONS = ["How many apples are left if each day the team sells 3 of 17?", "What is the total?",
             "If she sells 9 eggs each day for 2 dollars each, how many dollars is that?"]


def _items(n=1):
    return [Item(i, q, "1", {}) for i, q in enumerate(QUESTIONS[:n])]


def _team(models, modes=None):
    """A chain whose agent k runs on models[k] (None: the run's model); the last agent writes."""
    n = len(models)
    agents = [{"name": f"A{k}", "prompt": f"Agent {k}: think about {{question}}"} for k in range(n - 1)]
    agents.append({"name": "Final", "prompt": "Answer {question}\n{context}\n{answer}"})
    for k, m in enumerate(models):
        if m is not None:
            agents[k]["model"] = str(m)
    for k, mode in (modes or {}).items():
        agents[k]["mode"] = mode
    return parse_team({"agents": agents}, "test")


def _save_llama(folder, tok_folder, hidden=48, seed=1):
    """A tiny random Llama (another family and width) with the tokenizer saved in `tok_folder`."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    for f in tok_folder.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, folder / f.name)
    tok = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def dirs(tiny_model_dir, tmp_path_factory):
    """Folders: the tiny Qwen3 ("a"), a copy of it under another path ("a_copy": the same weights as a second
    model), a tiny Llama sharing its tokenizer ("b"), and a tiny Llama with a tokenizer of its own ("c")."""
    root = tmp_path_factory.mktemp("mixed")
    a_copy = root / "a_copy"
    shutil.copytree(tiny_model_dir, a_copy)
    b = _save_llama((root / "b").resolve(), tiny_model_dir) if (root / "b").mkdir() is None else None
    (root / "c_tok").mkdir()
    _train_tokenizer(root / "c_tok", vocab_size=300)
    (root / "c").mkdir()
    c = _save_llama(root / "c", root / "c_tok", hidden=32, seed=2)
    return {"a": str(tiny_model_dir), "a_copy": str(a_copy), "b": str(b), "c": str(c)}


@pytest.fixture(scope="module")
def loaded(dirs):
    return {k: load_model(v, device="cpu", dtype="float32") for k, v in dirs.items()}


def _cfg(team=None, **kw):
    base = dict(answer_type="number", max_new_tokens=6, temperature=0.0, top_p=1.0, seed=0, latent_steps=2)
    base.update(kw)
    return MethodConfig(team=team, **base)


def _models(team, dirs, loaded, default="a", flow="chain", cross_model="text", method="latent_mas", log=None):
    """team_models over the preloaded models; returns (TeamModels, team as it runs, notices, loads)."""
    by_path = {v: k for k, v in dirs.items()}
    loads = []

    def make(name):
        loads.append(name)
        return ModelWrapper(*loaded[by_path[name]], realign=False)
    models, team, notices = team_models(team, dirs[default], make, flow, cross_model, method,
                                        log=log or (lambda _: None))
    return models, team, notices, loads


def _strip(records):
    return [dict(r, time_s=0, agents=[dict(a, time_s=0) for a in r["agents"]]) for r in records]


# --- team files and the hand-off plan ---------------------------------------------------------------------------

def test_model_field_is_parsed_saved_and_checked():
    team = _team(["org/planner", None])
    assert team.agents[0].model == "org/planner" and team.agents[1].model is None
    assert team.model_names("dflt") == ("org/planner", "dflt")
    saved = team.as_dict()
    assert saved["agents"][0]["model"] == "org/planner" and "model" not in saved["agents"][1]
    assert parse_team(saved, "saved") == parse_team(saved, "saved") and parse_team(saved, "s").agents == team.agents
    for bad in ("", 3, ["a"]):
        with pytest.raises(TeamError, match="model must be"):
            parse_team({"agents": [{"name": "A", "prompt": "{question}", "model": bad}]}, "f")


def test_senders_and_the_text_switch():
    assert senders(("a", "a", "b", "a"), "chain") == [(1, 2), (2, 3)]
    assert senders(("a", "b", "a", "a"), "parallel") == [(1, 3)]
    assert senders(("a",) * 4, "chain") == [] == senders(("a",) * 4, "parallel")
    team = _team(["x", "x", "y", "y"])
    run, notices = cross_model_plan(team, ("x", "x", "y", "y"), "chain")
    assert [a.mode for a in run.agents] == ["latent", "text", "latent", "text"]
    assert len(notices) == 1 and "A1" in notices[0] and "writes text" in notices[0]
    for kw in ({"cross_model": "latent-map"}, {"method": "text_mas"}):
        assert cross_model_plan(team, ("x", "x", "y", "y"), "chain", **kw) == (team, [])
    written = _team(["x", "x", "y", "y"], {1: "text"})
    assert cross_model_plan(written, ("x", "x", "y", "y"), "chain") == (written, [])


def test_each_distinct_model_loads_once_and_its_memory_is_shown(dirs, loaded):
    lines = []
    team = _team([dirs["b"], None, dirs["b"], dirs["a_copy"]])
    models, _, _, loads = _models(team, dirs, loaded, log=lines.append)
    assert loads == [dirs["b"], dirs["a"], dirs["a_copy"]]  # b once though two agents name it
    assert models.names == (dirs["b"], dirs["a"], dirs["b"], dirs["a_copy"])
    assert models.of(0) is models.of(2) and models.of(1) is not models.of(3)
    a_bytes = sum(p.nbytes for p in loaded["a"][0].parameters())
    assert any(f"{a_bytes / 2**20:.1f} MiB of weights" in ln and dirs["a"] in ln for ln in lines)
    assert [m["agents"] for m in models.describe()] == [[0, 2], [1], [3]]


# --- the latent map ----------------------------------------------------------------------------------------------

def test_a_map_between_a_model_and_itself_is_the_identity(loaded):
    w = ModelWrapper(*loaded["a"])
    m = LatentMap.build(w, w)
    assert torch.allclose(m.weight, torch.eye(m.weight.shape[0]), atol=2e-3)
    ids = torch.arange(1, m.vocab)  # token 0 is the padding row, all zeros: no direction to agree on
    assert m.nearest_token_agreement(w.model, w.model, ids) == 1.0
    v = w.realigner(torch.randn(3, w.model.config.hidden_size))
    assert torch.allclose(m(v), v, atol=1e-3 * v.norm(dim=-1).max().item())


def test_a_map_recovers_a_rotated_and_rescaled_copy(loaded, dirs):
    w = ModelWrapper(*loaded["a"])
    other = load_model(dirs["a_copy"], device="cpu", dtype="float32")[0]
    emb = other.get_input_embeddings().weight
    q, _ = torch.linalg.qr(torch.randn(emb.shape[1], emb.shape[1], generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        emb.copy_(3.0 * emb @ q + 0.5)
    m = LatentMap.build(w, ModelWrapper(other, w.tokenizer, w.device))
    ids = torch.arange(1, m.vocab)
    assert m.nearest_token_agreement(w.model, other, ids) == 1.0
    src = w.model.get_input_embeddings().weight[:5]
    target = torch.nn.functional.normalize(emb[:5].detach(), dim=-1)
    assert torch.allclose(torch.nn.functional.normalize(m(src), dim=-1), target, atol=1e-3)


def test_maps_join_different_widths_and_refuse_different_tokenizers(loaded):
    a, b, c = (ModelWrapper(*loaded[k]) for k in "abc")
    m = LatentMap.build(a, b)
    assert tuple(m.weight.shape) == (64, 48)
    out = m(a.realigner(torch.randn(2, 64)))
    assert out.shape == (2, 48) and torch.allclose(out.norm(dim=-1), torch.full((2,), m.target_norm), rtol=1e-4)
    with pytest.raises(LatentMapError, match="tokenizers differ"):
        LatentMap.build(a, c)


def test_latent_map_across_tokenizers_is_refused_with_the_agents(dirs, loaded):
    with pytest.raises(ModelError, match=r"A0 .* hands latents to Final .* use --cross_model text"):
        _models(_team([None, dirs["c"]]), dirs, loaded, cross_model="latent-map")


# --- running mixed teams -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["latent_mas", "text_mas"])
def test_naming_the_default_model_on_every_agent_equals_the_default_team(method, dirs, loaded):
    w = ModelWrapper(*loaded["a"], realign=False)
    plain = _team([None] * 3)
    named = _team([dirs["a"]] * 3)
    models, named, notices, loads = _models(named, dirs, loaded)
    assert loads == [dirs["a"]] and notices == []
    run = get_method(method)
    want = run(w, _items(2), _cfg(plain, model_name=dirs["a"]))
    got = run(w, _items(2), _cfg(named, model_name=dirs["a"], models=models))
    assert _strip(got) == _strip(want)
    assert all(a["model"] == dirs["a"] for r in got for a in r["agents"])


def test_a_text_hand_off_replays_the_sender_turn_on_the_receiver(dirs, loaded):
    models, team, notices, _ = _models(_team([None, None, dirs["b"]], {1: "text"}), dirs, loaded)
    assert notices == []
    a, b = models.of(0), models.of(2)
    rec = get_method("latent_mas")(a, _items(), _cfg(team, models=models))[0]
    plan, critic, judger = rec["agents"]
    assert [x["model"] for x in rec["agents"]] == [dirs["a"], dirs["a"], dirs["b"]]
    assert critic["kv_tokens_in"] == plan["kv_tokens_out"]  # same model: the KV is handed on
    (h,) = judger["handoffs"]
    prompt = team_prompts("latent", team, _items()[0].question, answer_for(_items()[0], _cfg()))[1]
    turn = b.count_tokens(b.render(prompt)) + len(b.tokenizer(critic["output"], add_special_tokens=False)["input_ids"])
    assert h == {"from": "A1", "model": dirs["a"], "as": "text", "kv_tokens": turn}
    assert judger["kv_tokens_in"] == turn  # the receiver's cache holds the hand-off only: its first agent
    assert judger["kv_tokens_out"] == turn + judger["prompt_tokens"] + judger["output_tokens"] - 1


def test_a_latent_sender_before_another_model_writes_text(dirs, loaded):
    models, team, notices, _ = _models(_team([None, dirs["b"]]), dirs, loaded)
    assert team.agents[0].mode == "text" and len(notices) == 1
    rec = get_method("latent_mas")(models.of(0), _items(), _cfg(team, models=models))[0]
    assert rec["agents"][0]["output_tokens"] > 0 and rec["agents"][1]["handoffs"][0]["as"] == "text"


def test_latent_map_prefills_mapped_latents(dirs, loaded):
    models, team, notices, _ = _models(_team([None, None, dirs["b"]]), dirs, loaded, cross_model="latent-map")
    assert notices == [] and list(models.maps) == [(dirs["a"], dirs["b"])]
    rec = get_method("latent_mas")(models.of(0), _items(), _cfg(team, models=models, latent_steps=3))[0]
    critic, judger = rec["agents"][1:]
    (h,) = judger["handoffs"]
    assert h["as"] == "latent-map" and h["kv_tokens"] == critic["prompt_tokens"] + 3  # same tokenizer, same prompt
    assert judger["kv_tokens_in"] == h["kv_tokens"]


def test_a_latent_map_between_copies_of_one_model_gives_the_one_model_team(dirs, loaded):
    """The map between a model and its copy is the identity up to the ridge term: handing latents to the copy
    gives the judger the cache the one-model team's judger reads, so the greedy outputs agree."""
    w = ModelWrapper(*loaded["a"], realign=False)
    one = get_method("latent_mas")(w, _items(3), _cfg(_team([None, None])))
    models, team, _, _ = _models(_team([None, dirs["a_copy"]]), dirs, loaded, cross_model="latent-map")
    two = get_method("latent_mas")(w, _items(3), _cfg(team, models=models))
    assert [r["output"] for r in two] == [r["output"] for r in one]
    assert [r["agents"][1]["kv_tokens_in"] for r in two] == [r["agents"][1]["kv_tokens_in"] for r in one]


@pytest.mark.parametrize("case", ["text", "latent-map", "parallel", "text_mas", "other-tokenizer"])
def test_mixed_teams_batched_equal_one_by_one(case, dirs, loaded):
    other = dirs["c"] if case == "other-tokenizer" else dirs["b"]
    team = _team([None, other, None, other])
    flow = "parallel" if case == "parallel" else "chain"
    method = "text_mas" if case == "text_mas" else "latent_mas"
    models, team, _, _ = _models(team, dirs, loaded, flow=flow, method=method,
                                 cross_model="latent-map" if case in ("latent-map", "parallel") else "text")
    cfg = _cfg(team, models=models, prompt="hierarchical" if flow == "parallel" else "sequential")
    run = get_method(method)
    items = _items(3)
    batched = run(models.of(0), items, cfg)
    assert _strip(batched) == _strip([run(models.of(0), [it], cfg)[0] for it in items])
    assert any("handoffs" in a for a in batched[0]["agents"]) == (method == "latent_mas")


def test_the_summary_gives_time_and_kv_per_model(dirs, loaded):
    from rundir import per_model

    models, team, _, _ = _models(_team([None, None, dirs["b"]]), dirs, loaded)
    recs = get_method("latent_mas")(models.of(0), _items(2), _cfg(team, models=models))
    got = per_model(recs)
    assert list(got) == [dirs["a"], dirs["b"]] and got[dirs["a"]]["agents"] == ["A0", "A1"]
    for m, agents in ((dirs["a"], slice(0, 2)), (dirs["b"], slice(2, 3))):
        times = [sum(a["time_s"] for a in r["agents"][agents]) for r in recs]
        assert got[m]["time_s"] == pytest.approx(sum(times) / 2, abs=1e-4)
        assert got[m]["kv_bytes_max_mean"] == sum(max(a["kv_bytes_out"] for a in r["agents"][agents])
                                                  for r in recs) / 2
    assert got[dirs["a"]]["kv_bytes_max_mean"] > 0 and got[dirs["b"]]["kv_tokens_max_mean"] > 0


def test_cross_model_is_a_warning_outside_latent_mas():
    from config import RunConfig, check

    cfg = RunConfig().updated({"method": "text_mas", "cross_model": "latent-map"})
    assert any("--cross_model does nothing for --method text_mas" in w for w in check(cfg, {"cross_model": 1}))


def test_the_map_bench_measures_on_held_out_tokens(loaded):
    import importlib.util

    from tests.conftest import ROOT

    spec = importlib.util.spec_from_file_location("bench_latent_map", ROOT / "bench" / "latent_map_fit.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    a, b = ModelWrapper(*loaded["a"]), ModelWrapper(*loaded["b"])
    self_map, other = bench.measure(a, a, held_out=0.25), bench.measure(a, b, held_out=0.25)
    assert self_map["test_tokens"] == 99 and self_map["fit_tokens"] == 300  # the all-zero padding row left out
    assert self_map["r2_held_out"] > 0.999 and self_map["agreement_held_out"] == 1.0
    assert other["r2_held_out"] < 0.5 and other["shape"] == [64, 48]  # two random models: little to map


def test_the_cli_runs_a_mixed_team_records_its_models_and_resumes(dirs, tmp_path, capsys):
    import json

    import run

    team = tmp_path / "mixed.json"
    team.write_text(json.dumps({"agents": [{"name": "Scout", "prompt": "Look at {question}"},
                                           {"name": "Closer", "prompt": "{question} {answer}", "model": dirs["b"]}]}))
    args = ["--method", "latent_mas", "--agents", str(team), "--model_name", dirs["a"], "--max_samples", "2",
            "--max_new_tokens", "4", "--temperature", "0", "--latent_steps", "1", "--device", "cpu",
            "--output_dir", str(tmp_path / "runs")]
    assert run.main(args) == 0
    err = capsys.readouterr().err
    assert "[team] agent Scout hands on to Closer on another model: it writes text" in err
    assert sum(f"[model] {d}:" in err for d in (dirs["a"], dirs["b"])) == 2 and "MiB of weights" in err
    rd = next((tmp_path / "runs").iterdir())
    config = json.loads((rd / "config.json").read_text())
    assert [(m["name"], m["agents"], m["hidden_size"]) for m in config["models"]] == [(dirs["a"], [0], 64),
                                                                                      (dirs["b"], [1], 48)]
    assert [a["mode"] for a in config["team"]["agents"]] == ["text", "text"]  # saved as it ran
    summary = json.loads((rd / "summary.json").read_text())
    assert list(summary["models"]) == [dirs["a"], dirs["b"]]
    lines = (rd / "results.jsonl").read_text().splitlines(keepends=True)
    (rd / "results.jsonl").write_text(lines[0])
    assert run.main(["--resume", str(rd)]) == 0
    assert "[team]" not in capsys.readouterr().err  # the saved team already writes text
    recs = [json.loads(x) for x in (rd / "results.jsonl").read_text().splitlines()]
    assert [a["model"] for a in recs[1]["agents"]] == [dirs["a"], dirs["b"]]
    assert recs[1]["agents"][1]["handoffs"][0]["from"] == "Scout"
    capsys.readouterr()
    bad = ["--method", "latent_mas", "--agents", str(team), "--model_name", dirs["c"], "--cross_model", "latent-map",
           "--max_samples", "1", "--device", "cpu", "--output_dir", str(tmp_path / "bad")]
    with pytest.raises(SystemExit) as e:
        run.main(bad)
    assert e.value.code == 2 and "tokenizers differ" in capsys.readouterr().err



def test_the_team_bench_runs_every_configuration(dirs, tmp_path, monkeypatch):
    import importlib.util
    import json
    import sys

    from tests.conftest import ROOT

    spec = importlib.util.spec_from_file_location("bench_mixed_teams", ROOT / "bench" / "mixed_teams.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "m.json"
    monkeypatch.setattr(sys, "argv", ["x", "--model_name", dirs["a"], "--second", dirs["b"], "--max_samples", "2",
                                      "--max_new_tokens", "3", "--latent_steps", "1", "--device", "cpu", "--dtype",
                                      "float32", "--out", str(out)])
    bench.main()
    runs = json.loads(out.read_text())["runs"]
    assert [(r["method"], r["team"], r["cross_model"], r["items"]) for r in runs] == [
        (m, t, c, 2) for m, t, c in bench.CONFIGS]
    one, two = [dirs["a"]], [dirs["a"], dirs["b"]]
    assert [list(r["models"]) for r in runs] == [one, two, two, one, two]
    assert [a["model"] for a in runs[2]["agents"]] == [dirs["a"]] * 3 + [dirs["b"]]


def test_the_report_groups_runs_by_team_composition(tmp_path):
    import json

    from report.runs import find_runs, group_runs
    from tests.test_report import make_run

    runs = tmp_path / "runs"
    for name, method, models in (("base", "baseline", None), ("one", "latent_mas", None),
                                 ("named", "latent_mas", {"smollm2-135m": ["Planner", "Judger"]}),
                                 ("mixed", "latent_mas", {"smollm2-135m": ["Planner"], "/m/tiny": ["Judger"]}),
                                 ("mixed-text", "text_mas", {"smollm2-135m": ["Planner"], "/m/tiny": ["Judger"]})):
        d = make_run(runs, name, method=method)
        if models:
            summary = json.loads((d / "summary.json").read_text())
            summary["models"] = {m: {"agents": a, "time_s": 1.0, "kv_bytes_max_mean": 1.0, "kv_tokens_max_mean": 1.0}
                                 for m, a in models.items()}
            (d / "summary.json").write_text(json.dumps(summary))
    groups = group_runs(find_runs([str(runs)]))
    assert {k[0]: sorted(r.path.name for r in rs) for k, rs in groups.items()} == {
        "smollm2-135m": ["base", "named", "one"],
        "smollm2-135m (Planner) + /m/tiny (Judger)": ["mixed", "mixed-text"]}


def test_the_report_tells_latent_map_runs_apart(tmp_path):
    from report.runs import find_runs, label_runs
    from report.tables import cell_key
    from tests.test_report import make_run

    runs = tmp_path / "runs"
    make_run(runs, "text")
    make_run(runs, "map", cross_model="latent-map")
    found = sorted(find_runs([str(runs)]), key=lambda r: r.path.name)
    label_runs(found)
    assert [r.label for r in found] == ["latent_mas m10 latent-map", "latent_mas m10"]
    assert cell_key(found[0]) != cell_key(found[1])  # two settings, not two seeds of one


def test_a_sweep_loads_each_team_model_and_latent_map_once(dirs, tmp_path, monkeypatch, capsys):
    """Three cells: a mixed team (second model through a latent map) at two seeds, then the default team. The second
    model, the map and each realignment are built once, the second model is released before the cell that does not
    need it, and every cell's records equal those of the same run started alone."""
    import json

    import models
    import run
    import sweep
    from tests.conftest import results_of, untimed

    team = tmp_path / "mixed.json"
    team.write_text(json.dumps({"agents": [{"name": "Scout", "prompt": "Look at {question}"},
                                           {"name": "Closer", "prompt": "{question} {answer}", "model": dirs["b"]}]}))
    common = {"method": "latent_mas", "model_name": dirs["a"], "device": "cpu", "task": "gsm8k", "max_samples": 2,
              "max_new_tokens": 4, "latent_steps": 1, "temperature": 0.7, "cross_model": "latent-map"}
    f = tmp_path / "sweep.yaml"
    f.write_text(json.dumps({**common, "output_dir": str(tmp_path / "sw"),
                             "grid": [{"agents": str(team), "seed": [1, 2]}, {"seed": 3}]}))
    loads, maps, realigns, held = [], [], [], []
    real_load, real_map, real_realign = models.load_model, LatentMap.build, models.Realigner.build.__func__
    monkeypatch.setattr(models, "load_model", lambda *a, **k: loads.append(a[0]) or real_load(*a, **k))
    monkeypatch.setattr(LatentMap, "build", classmethod(lambda cls, *a, **k: maps.append(1) or real_map(*a, **k)))
    monkeypatch.setattr(models.Realigner, "build",
                        classmethod(lambda cls, m, *a, **k: realigns.append(m) or real_realign(cls, m, *a, **k)))

    class Pool(sweep.ModelPool):  # what the pool holds whenever a cell asks for a model
        def wrapper(self, cfg, launch):
            held.append(sorted(k[0] for k in self.loaded))
            return super().wrapper(cfg, launch)
    monkeypatch.setattr(sweep, "ModelPool", Pool)
    assert run.main(["sweep", str(f)]) == 0
    assert "3 of 3 cells complete, 2 model load(s)" in capsys.readouterr().err
    assert loads == [dirs["a"], dirs["b"]] and len(maps) == 1 and len({id(m) for m in realigns}) == len(realigns) == 2
    a, both = [dirs["a"]], sorted([dirs["a"], dirs["b"]])
    assert held == [[], a, both, both, a]  # per cell the models it asks for; b released before the cell without it
    cells = sorted(p.name for p in (tmp_path / "sw").iterdir() if p.is_dir())
    assert cells == ["mixed_s1", "mixed_s2", "s3"]
    for name in cells:
        seed, flags = name[-1], [] if name == "s3" else ["--agents", str(team)]
        argv = [x for k, v in common.items() for x in (f"--{k}", str(v))]
        assert run.main([*argv, *flags, "--seed", seed, "--output_dir", str(tmp_path / name)]) == 0
        (solo,) = (tmp_path / name).iterdir()
        assert untimed(results_of(solo)) == untimed(results_of(tmp_path / "sw" / name))
