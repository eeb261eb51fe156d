"""Reproducing the reference code: importing its prompts (from tests/reference_standin, a small stand-in written for
these tests), text_mas's hand-off format and cut, baseline with a one-agent team, --trace, --think TEXT, the
reference's hand-off switches (latent_only, sequential_info_only) and its judger without cache at latent_steps 0."""
from __future__ import annotations

import importlib.util
import json
import types

import pytest

import config
import run
import runner
from data import Item
from kv_state import KVState, keep_last
from methods import MethodConfig, get_method
from models import ModelWrapper
from prompts import agent_prompt
from reference_import import (
    Q_SENTINEL,
    ImportTeamError,
    Rejected,
    import_all,
    import_team,
    load_reference,
    python_slice,
)
from teams import TeamError, load_team, parse_team
from tests.conftest import ROOT, compressor

pytestmark = pytest.mark.usefixtures("one_thread")
STANDIN = ROOT / "tests" / "reference_standin"
QUESTIONS = ["How many apples are left if each day the team sells 3 of 17?", "What is {the} total?",
             "If she sells 9 eggs each day for 2 dollars each, how many dollars is that?"]


def _prepare(argv):
    return runner.prepare(config.parse_command_line(argv))


def _settings(argv):
    return _prepare(argv).cfg


def _builders():
    spec = importlib.util.spec_from_file_location("_standin_prompts_for_tests", STANDIN / "prompts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(task, method, n=-1):
    return types.SimpleNamespace(model_name="Qwen/Qwen3-4B", task=task, method=method, text_mas_context_length=n)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    out = tmp_path_factory.mktemp("imported")
    lines = []
    files = import_all(STANDIN, out, echo=lines.append)
    return out, files, lines


# --- the importer ----------------------------------------------------------------------------------------------------

def test_every_team_the_builders_accept_is_written_and_each_refusal_is_one_line(imported):
    out, files, lines = imported
    names = {p.stem for p in files}
    math, choice = ("gsm8k", "aime2024", "aime2025"), ("gpqa", "medqa", "arc_easy", "arc_challenge")
    assert names == ({f"sequential_{t}" for t in math + choice} | {f"baseline_{t}" for t in math + choice}
                     | {f"hierarchical_{t}" for t in math})
    skipped = [x for x in lines if x.startswith("skipped ")]
    assert "skipped sequential_humaneval: build_agent_message_sequential_latent_mas(role='judger'): " \
           "NotImplementedError: no answer line for humaneval" in skipped
    assert any(x.startswith("skipped hierarchical_gpqa: build_agent_message_hierarchical_latent_mas(role='planner'): "
                            "UnboundLocalError") for x in skipped)
    assert all("\n" not in x for x in lines) and lines[-1].startswith(f"imported {len(files)} team files")


@pytest.mark.parametrize("topology, task", [("sequential", "gsm8k"), ("sequential", "medqa"),
                                            ("hierarchical", "aime2025")])
def test_imported_templates_give_exactly_the_builders_messages(imported, topology, task):
    """Every agent, both families, questions with braces, contexts cut at several lengths: the team file renders
    what the reference's own builder returns, system message included."""
    ref = _builders()
    team = load_team(imported[0] / f"{topology}_{task}.yaml")
    latent_b = getattr(ref, f"build_agent_message_{topology}_latent_mas")
    text_b = getattr(ref, f"build_agent_messages_{topology}_text_mas")
    for agent in team.agents:
        for q in QUESTIONS:
            want = latent_b(agent.role, q, "", method="latent_mas", args=_args(task, "latent_mas"))
            assert want[-1]["content"] == agent_prompt(agent, "latent", q, "unused")
            assert (want[0]["content"] if want[0]["role"] == "system" else None) == agent.system
            for n in (-1, 5, 1000):
                ctx = "[Alpha]:\nstep {one}\n\n[Beta]:\nok\n\n"
                want = text_b(agent.role, q, ctx, method="text_mas", args=_args(task, "text_mas", n))
                assert want[-1]["content"] == agent_prompt(agent, "text", q, "unused", python_slice(ctx, n))


def test_baseline_team_is_the_single_agent_builder(imported):
    ref = _builders()
    team = load_team(imported[0] / "baseline_gpqa.yaml")
    assert len(team.agents) == 1
    for q in QUESTIONS:
        want = ref.build_agent_messages_single_agent(q, args=_args("gpqa", "baseline"))
        assert [want[0]["content"], want[1]["content"]] == [team.agents[0].system,
                                                            agent_prompt(team.agents[0], "text", q, "x")]


def test_cut_think_string_and_hierarchical_name_map_are_recorded(imported):
    seq = load_team(imported[0] / "sequential_gsm8k.yaml")
    hier = load_team(imported[0] / "hierarchical_gsm8k.yaml")
    assert seq.context_cut == hier.context_cut == "python_slice"
    assert seq.context_names == () and dict(hier.context_names)["Alpha"] == "First Expert"
    assert seq.reference["think"] == "<think>" and seq.reference["topology"] == "sequential"
    assert hier.handed_on(hier.agents[0], "x") == "[First Expert]:\nx\n\n"
    assert seq.handed_on(seq.agents[0], "x") == "[Alpha]:\nx\n\n"
    assert [a.name for a in seq.agents] == ["Alpha", "Beta", "Gamma", "Omega"]
    assert seq.agents[-1].role == "judger" and seq.agents[-1].mode == "text"


def test_an_unknown_cut_and_a_non_template_are_refused(tmp_path):
    (tmp_path / "prompts.py").write_text(
        "def build_agent_message_sequential_latent_mas(role, question, context='', method=None, args=None):\n"
        "    return [{'role': 'user', 'content': question}]\n"
        "def build_agent_messages_sequential_text_mas(role, question, context='', method=None, args=None):\n"
        "    return [{'role': 'user', 'content': question + context[-6:]}]\n"
        "def build_agent_messages_single_agent(question, args=None):\n"
        "    return [{'role': 'user', 'content': question.upper()}]\n")
    ref = load_reference(tmp_path)
    assert len(ref.agents) == 4  # no methods/__init__.py: the references' four roles, with a note
    with pytest.raises(Rejected, match="cut in a way"):
        import_team(ref, "sequential", "gsm8k")
    lines = []
    assert import_all(tmp_path, tmp_path / "out", tasks=["gsm8k"], echo=lines.append) == []
    assert any("baseline_gsm8k" in x and "not the same template" in x for x in lines)
    assert Q_SENTINEL not in "".join(lines)


def test_import_team_command(imported, tmp_path, capsys):
    assert run.main(["import-team", str(STANDIN), "--out", str(tmp_path / "t"), "--task", "gsm8k"]) == 0
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["baseline_gsm8k.yaml", "hierarchical_gsm8k.yaml",
                                                                "sequential_gsm8k.yaml"]
    assert (tmp_path / "t" / "sequential_gsm8k.yaml").read_text() == (imported[0] / "sequential_gsm8k.yaml").read_text()
    with pytest.raises(SystemExit) as e:
        run.main(["import-team", str(tmp_path / "nothing"), "--out", str(tmp_path / "u")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("run.py import-team: error: ") and "not a folder" in err[0]


def test_not_a_checkout_is_one_line(tmp_path):
    with pytest.raises(ImportTeamError, match="no such file"):
        load_reference(tmp_path)
    (tmp_path / "prompts.py").write_text("X = 1\n")
    with pytest.raises(ImportTeamError, match="is this a LatentMAS checkout"):
        load_reference(tmp_path)
    (tmp_path / "prompts.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ImportTeamError, match="cannot load it"):
        load_reference(tmp_path)


def test_team_file_settings_are_checked(tmp_path):
    agents = [{"name": "A", "prompt": "{question}"}]
    for extra, words in [({"context_cut": "middle"}, "context_cut must be one of"),
                         ({"context_format": "[{who}]"}, "context_format must be a string with {text}"),
                         ({"context_names": ["A"]}, "context_names must map"), ({"team_size": 3}, "unknown field")]:
        with pytest.raises(TeamError, match=words):
            parse_team({"agents": agents, **extra}, "t.yaml")
    team = parse_team({"agents": agents, "context_cut": "none", "context_names": {"A": "Alpha"}}, "t.yaml")
    assert parse_team(team.as_dict(), "saved") == team.__class__(team.agents, "saved", "", team.context_format,
                                                                 team.context_names, "none", None)


# --- a prompt file (the Science-LatentMAS branch's --custom_prompt_file) ----------------------------------------------

PROMPT_FILE = STANDIN / "team_prompts.json"


def _file_args(task, method, n=-1):
    """The args the stand-in's run.py would hand its builders with team_prompts.json."""
    a = _args(task, method, n)
    a.custom_prompts = json.loads(PROMPT_FILE.read_text())
    return a


@pytest.fixture(scope="module")
def from_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("from_file")
    lines = []
    files = import_all(STANDIN, out, echo=lines.append, prompt_file="team_prompts.json")  # found inside REF_DIR
    return out, files, lines


def test_prompt_file_agents_and_templates_give_the_builders_messages(from_file):
    """The file's agents replace the default ones (an entry without a role is dropped, as the reference drops it);
    its templates, its empty system message, a template that does not format (taken as it stands) and the built-in
    planner prompt it cannot override all render what the builders give with the file in args."""
    ref = _builders()
    for task in ("gsm8k", "medqa"):
        team = load_team(from_file[0] / f"sequential_{task}.yaml")
        assert [(a.name, a.role) for a in team.agents] == [("Scout", "scout"), ("Checker", "checker"),
                                                           ("Closer", "closer")]
        assert team.context_cut == "python_slice" and team.reference["prompt_file"] == str(PROMPT_FILE)
        for agent in team.agents:
            assert agent.system is None
            for q in QUESTIONS:
                want = ref.build_agent_message_sequential_latent_mas(agent.role, q, "", method="latent_mas",
                                                                     args=_file_args(task, "latent_mas"))
                assert want == [{"role": "user", "content": agent_prompt(agent, "latent", q, "unused")}]
                for n in (-1, 5, 1000):
                    ctx = "[Scout]:\nstep {one}\n\n[Checker]:\nok\n\n"
                    want = ref.build_agent_messages_sequential_text_mas(agent.role, q, ctx, method="text_mas",
                                                                         args=_file_args(task, "text_mas", n))
                    assert want[-1]["content"] == agent_prompt(agent, "text", q, "unused", python_slice(ctx, n))
        # {the rule} does not format, so the whole template is sent as written, its {question} included
        assert agent_prompt(team.agents[1], "text", "Q?", "x", "") == "Check {question} against {the rule}."


def test_prompt_file_changes_what_the_reference_changes_and_says_so(from_file, imported):
    out, files, lines = from_file
    names = {p.stem for p in files}
    # no judger role: the sequential builders no longer reject the code tasks
    assert {f"sequential_{t}" for t in ("humaneval", "mbpp")} <= names and len(names) == 22
    assert f"{PROMPT_FILE} changed 15 of the 22 team files; the others are what the builders give without it" in lines
    # the stand-in's baseline builder does not read the file: its teams are the plain import's
    assert load_team(out / "baseline_gsm8k.yaml").agents == load_team(imported[0] / "baseline_gsm8k.yaml").agents
    hier = load_team(out / "hierarchical_gsm8k.yaml")
    assert hier.context_names == () and hier.handed_on(hier.agents[0], "x") == "[Scout]:\nx\n\n"  # not in its map
    # imported without a file, the checkout's prompt-file option and the JSON it ships are named
    assert any(x.startswith("note: its run.py also reads --custom_prompt_file") and "team_prompts.json" in x
               for x in imported[2])


def test_prompt_file_that_is_text_empty_missing_or_unread_by_the_checkout(tmp_path, imported):
    text = tmp_path / "plain.txt"
    text.write_text("Answer {question} briefly.")
    lines = []
    files = import_all(STANDIN, tmp_path / "t", tasks=["gsm8k"], echo=lines.append, prompt_file=text)
    assert lines[0] == f"{text} changed 0 of the 3 team files; the others are what the builders give without it"
    assert [load_team(f).agents for f in files] == [load_team(imported[0] / f.name).agents for f in files]
    (tmp_path / "empty.json").write_text(" \n")
    for given, words in [(tmp_path / "empty.json", "prompt file is empty"), ("nope.json", "no such prompt file")]:
        with pytest.raises(ImportTeamError, match=words):
            load_reference(STANDIN, prompt_file=given)
    bad = tmp_path / "bad.json"
    bad.write_text('{"agents": [{"name": 3, "role": "x"}]}')
    with pytest.raises(ImportTeamError, match="must be strings, not 3"):
        load_reference(STANDIN, prompt_file=bad)
    no_option = tmp_path / "ref"
    no_option.mkdir()
    (no_option / "prompts.py").write_text((STANDIN / "prompts.py").read_text())
    with pytest.raises(ImportTeamError, match="has no --custom_prompt_file: this checkout reads no prompt files"):
        load_reference(no_option, prompt_file=PROMPT_FILE)


def test_prompt_file_team_traces_equal_the_builders(tiny, from_file, tmp_path, capsys):
    ref, w = _builders(), ModelWrapper(*tiny)
    team = load_team(from_file[0] / "sequential_gsm8k.yaml")
    rec = get_method("text_mas")(w, _items(), _cfg(team=team))[0]
    ctx = ""
    for a in rec["agents"]:
        assert a["messages"] == ref.build_agent_messages_sequential_text_mas(
            a["role"], rec["question"], ctx, method="text_mas", args=_file_args("gsm8k", "text_mas"))
        ctx += f"[{a['name']}]:\n{a['output']}\n\n"
    assert "output_ids" in rec["agents"][-1]
    assert run.main(["import-team", str(STANDIN), "--prompt_file", str(PROMPT_FILE), "--task", "gsm8k", "--out",
                     str(tmp_path / "t")]) == 0
    assert (tmp_path / "t" / "sequential_gsm8k.yaml").read_text() == \
        (from_file[0] / "sequential_gsm8k.yaml").read_text()
    assert "changed 2 of the 3 team files" in capsys.readouterr().out


# --- runs with imported teams, --trace -------------------------------------------------------------------------------

def _cfg(**kw):
    base = dict(answer_type="number", max_new_tokens=6, temperature=0.0, top_p=1.0, seed=0, latent_steps=2,
                trace=True)
    base.update(kw)
    return MethodConfig(**base)


def _items(n=1):
    return [Item(i, q, "1", {}) for i, q in enumerate(QUESTIONS[:n])]


def test_text_mas_trace_equals_the_builders_with_the_sliced_context(tiny, imported):
    ref, w = _builders(), ModelWrapper(*tiny)
    for topology in ("sequential", "hierarchical"):
        team = load_team(imported[0] / f"{topology}_gsm8k.yaml")
        rec = get_method("text_mas")(w, _items(), _cfg(team=team))[0]
        builder = getattr(ref, f"build_agent_messages_{topology}_text_mas")
        ctx = ""
        for a in rec["agents"]:
            want = builder(a["role"], rec["question"], ctx, method="text_mas", args=_args("gsm8k", "text_mas"))
            assert a["messages"] == want
            assert w.tokenizer(a["rendered"], add_special_tokens=False)["input_ids"] == a["input_ids"]
            assert len(a["output_ids"]) == a["output_tokens"]
            ctx += f"[{dict(team.context_names).get(a['name'], a['name'])}]:\n{a['output']}\n\n"


def test_latent_and_baseline_trace_equal_the_builders_and_think_is_appended(tiny, imported):
    ref, w = _builders(), ModelWrapper(*tiny)
    team = load_team(imported[0] / "sequential_gsm8k.yaml")
    rec = get_method("latent_mas")(w, _items(), _cfg(team=team, think="<think>"))[0]
    for a in rec["agents"]:
        want = ref.build_agent_message_sequential_latent_mas(a["role"], rec["question"], "", method="latent_mas",
                                                             args=_args("gsm8k", "latent_mas"))
        assert a["messages"] == want and a["rendered"].endswith("assistant\n<think>")
        assert ("output_ids" in a) == (a["role"] == "judger")
    base = load_team(imported[0] / "baseline_gsm8k.yaml")
    rec = get_method("baseline")(w, _items(), _cfg(team=base))[0]
    assert rec["agents"][0]["messages"] == ref.build_agent_messages_single_agent(rec["question"],
                                                                                 args=_args("gsm8k", "baseline"))


def test_trace_is_off_by_default_and_changes_no_output(tiny):
    w = ModelWrapper(*tiny)
    plain = get_method("latent_mas")(w, _items(2), _cfg(trace=False))
    traced = get_method("latent_mas")(w, _items(2), _cfg())
    assert [r["output"] for r in plain] == [r["output"] for r in traced]
    assert not any(k in a for r in plain for a in r["agents"] for k in ("messages", "rendered", "input_ids", "kept"))


@pytest.mark.parametrize("scope", ["shared", "layer", "head"])
def test_trace_kept_entries_per_scope_do_not_depend_on_the_batch(tiny, scope):
    w = ModelWrapper(*tiny)
    comp = compressor("streaming", kv_keep=0.5, kv_scope=scope, kv_min_keep=2)  # position-based: no float near-ties
    together = get_method("latent_mas")(w, _items(3), _cfg(compressor=comp))
    for i, rec in enumerate(together):
        alone = get_method("latent_mas")(w, _items(3)[i:i + 1], _cfg(compressor=comp))[0]
        for a, b in zip(rec["agents"][1:], alone["agents"][1:]):
            assert a["kept"] == b["kept"]
            if scope != "shared":
                assert len(a["kept"]) == 4 and (scope == "layer" or len(a["kept"][0]) == 2)  # tiny: 4 layers, 2 heads
            flat = a["kept"] if scope == "shared" else a["kept"][0] if scope == "layer" else a["kept"][0][0]
            assert len(flat) == a["kv_tokens_in"] and flat == sorted(flat) and flat[-1] < a["kv_tokens_before"]
    assert "kept" not in together[0]["agents"][0]


# --- the reference's hand-off switches -------------------------------------------------------------------------------

@pytest.mark.parametrize("handoff", ["latent_only", "sequential_info_only"])
def test_handoff_switches_keep_what_the_reference_keeps(tiny, handoff):
    w = ModelWrapper(*tiny)
    recs = get_method("latent_mas")(w, _items(3), _cfg(handoff=handoff, kv_positions="shift", trace=False))
    for rec in recs:
        a = rec["agents"]
        for prev, nxt in zip(a, a[1:]):
            want = 2 if handoff == "latent_only" else prev["prompt_tokens"] + 2
            assert nxt["kv_tokens_in"] == want
        alone = get_method("latent_mas")(w, [Item(rec["index"], rec["question"], "1", {})],
                                         _cfg(handoff=handoff, kv_positions="shift", trace=False))[0]
        assert alone["output"] == rec["output"]  # batched == unbatched under the cut


def test_keep_last_keeps_each_rows_newest_entries_and_nothing_means_empty(tiny):
    w = ModelWrapper(*tiny)
    state = KVState.empty(2, w.device)
    w.prefill_and_think(state, w.encode([w.render(q) for q in QUESTIONS[:2]]), 1)
    pos_before = state.pos[0, :, 0].clone()
    mask_before = state.mask.clone()
    keep_last(w.model, state, [3, 5], "original")
    assert state.valid_tokens() == [3, 5]
    for b, n in enumerate((3, 5)):
        want = pos_before[b][mask_before[b] == 1][-n:]
        assert state.pos[0, b, 0][state.mask[b] == 1].tolist() == want.tolist()
    nxt = state.next_pos.clone()
    keep_last(w.model, state, [0, 0], "original")
    assert state.length == 0 and state.next_pos.tolist() == nxt.tolist()


def test_zero_steps_judger_empty_answers_from_its_prompt_alone(tiny):
    w = ModelWrapper(*tiny)
    rec = get_method("latent_mas")(w, _items(), _cfg(latent_steps=0, zero_steps_judger="empty"))[0]
    ours = get_method("latent_mas")(w, _items(), _cfg(latent_steps=0))[0]
    assert rec["agents"][-1]["kv_tokens_in"] == 0 and ours["agents"][-1]["kv_tokens_in"] > 0
    judger = rec["agents"][-1]
    alone = w.generate(KVState.empty(1, w.device), w.encode([judger["rendered"]]), 6)
    assert alone.tokens[0] == judger["output_ids"]


# --- the command line ------------------------------------------------------------------------------------------------

def test_think_takes_an_optional_text(tmp_path):
    assert _settings(["--method", "latent_mas", "--think"]).latent.think == "<think>"
    assert _settings(["--method", "latent_mas", "--think", "<think>\n"]).latent.think == "<think>\n"
    assert _settings(["--method", "latent_mas"]).latent.think is None
    f = tmp_path / "exp.yaml"
    f.write_text("method: latent_mas\nthink: true\n")
    assert _settings(["--config", str(f)]).latent.think == "<think>"
    from config import RunConfig

    assert RunConfig.from_saved({"think": True}).latent.think == "<think>\n"  # what a switch-era run appended
    assert RunConfig.from_saved({"think": False}).latent.think is None


def test_agents_path_placeholders_and_baseline_team(imported):
    folder = imported[0]
    template = f"{folder}/{{prompt}}_{{task}}.yaml"
    cfg = _settings(["--method", "text_mas", "--task", "medqa", "--agents", template])
    assert cfg.team.agents == f"{folder}/sequential_medqa.yaml"
    plan = _prepare(["--method", "baseline", "--agents", f"{folder}/{{prompt}}_{{task}}.yaml"])
    assert plan.cfg.team.agents == f"{folder}/baseline_gsm8k.yaml" and len(plan.team.agents) == 1
    assert _prepare(["--method", "baseline"]).team is None  # the harness's own prompt stays the default
    with pytest.raises(config.ConfigError, match="baseline takes a one-agent team, this one has 4"):
        _prepare(["--method", "baseline", "--agents", f"{folder}/sequential_gsm8k.yaml"])
    with pytest.raises(config.ConfigError, match="--handoff does nothing for --method text_mas"):
        _prepare(["--method", "text_mas", "--handoff", "latent_only"])
    _prepare(["--method", "latent_mas", "--handoff", "latent_only", "--kv_positions", "shift"])  # allowed


def test_imported_team_runs_from_the_command_line_with_trace(tiny_model_dir, imported, tmp_path):
    out = tmp_path / "runs"
    code = run.main(["--method", "text_mas", "--model_name", str(tiny_model_dir), "--data_path",
                     str(_write_items(tmp_path)), "--task", "gsm8k", "--max_samples", "1", "--max_new_tokens", "3",
                     "--temperature", "0", "--agents", str(imported[0] / "sequential_gsm8k.yaml"), "--trace",
                     "--output_dir", str(out)])
    assert code == 0
    rec = json.loads(next(out.rglob("results.jsonl")).read_text().splitlines()[0])
    assert all({"messages", "rendered", "input_ids", "output_ids"} <= set(a) for a in rec["agents"])
    saved = json.loads(next(out.rglob("config.json")).read_text())
    assert saved["team"]["context_cut"] == "python_slice" and saved["args"]["trace"] is True


def _write_items(tmp_path):
    f = tmp_path / "items.jsonl"
    f.write_text(json.dumps({"question": "What is 2 + 3?", "answer": "5"}) + "\n")
    return f


def test_reference_question_layout_for_arc_and_harness_default_unchanged():
    from data.builders import letter_item
    from data.load import reference_layout

    row = {"question": "Which gas do plants take in?", "choices": {"text": ["oxygen", "carbon dioxide", "neon"],
                                                                   "label": ["1", "2", "3"]}, "answerKey": "2"}
    item = letter_item(row, 0, "arc#0")
    assert item.question == "Which gas do plants take in?\nA. oxygen\nB. carbon dioxide\nC. neon"
    ref = reference_layout("arc_easy", item)
    assert ref.question == "Which gas do plants take in?\na: oxygen\nb: carbon dioxide\nc: neon"
    assert (ref.gold, ref.meta) == (item.gold, item.meta) == ("B", item.meta)
    assert reference_layout("gpqa", item) is item  # other tasks: as this harness writes them


def test_paper_sweep_runs_the_imported_teams_per_cell(imported):
    import sweep

    template = f"{imported[0]}/{{prompt}}_{{task}}.yaml"
    s = sweep.plan(str(ROOT / "config" / "paper" / "latentmas_main.yaml"), {"agents": template})
    by_task = {}
    for c in s.cells:
        by_task.setdefault(c.cfg.data.task if c.cfg else c.given["task"], []).append(c)
    for c in by_task["gsm8k"]:  # the stand-in covers gsm8k: every method runs its imported team
        want = "baseline" if c.cfg.method == "baseline" else "sequential"
        assert not c.refused and c.team.source == f"{imported[0]}/{want}_gsm8k.yaml"
    assert all(c.refused and "cannot read team file" in c.refused for c in by_task["mbppplus"])
