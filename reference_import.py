"""Import a reference checkout's prompts as team files: `python run.py import-team REF_DIR --out DIR`.

The public LatentMAS code (main and its Science-LatentMAS branch) and kNN-LatentMAS keep their prompts in
`prompts.py` as builder functions that return chat messages, and their agent list in `methods/__init__.py`
(`default_agents()`). Nothing of theirs is copied into this repository: the importer loads the user's checkout,
calls its own builders with sentinel arguments, and turns what they return into templates:

- the question and context sentinels become `{question}` / `{context}`, every other brace is escaped;
- a context the builder cuts is detected by calling it with two context lengths: `context[:N]` (N =
  `--text_mas_context_length`, whose -1 drops the last character) is written as the team's `context_cut:
  python_slice`; any other transformation refuses that team;
- the builders' assertions are met by the stand-in arguments (the method names, a model name containing "qwen",
  the run's method in `args.method`); unknown attributes of `args` read as None;
- each template is checked by re-rendering it with other values and comparing with the builder's output;
- a task a builder rejects (an exception, e.g. NotImplementedError or an unset prompt for that task) is skipped with
  one line naming the builder and the error.

The Science-LatentMAS branch's run.py also takes `--custom_prompt_file`: JSON with an "agents" list of {name, role},
role-keyed templates with {question}/{context} and an optional "system", or plain text. `--prompt_file FILE` reads
such a file as that run.py reads it and hands the builders the same `args` fields (custom_prompts,
custom_prompt_text, custom_agents); the agents in the file replace default_agents(). A checkout whose run.py has no
such option is refused, and one that has it but is imported without a file gets a note naming the JSON files it ships.

Besides the prompts it records, when the checkout shows them, the string the reference appends for `--think` (from
`run.py` / `methods/latent_mas.py`) and the name map that its hierarchical text_mas uses to label handed-on text
(from `methods/text_mas.py`), both read with `ast`, never executed.

Writes DIR/<topology>_<task>.yaml (latent and text prompts per agent) and DIR/baseline_<task>.yaml (one agent).
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from errors import RunError
from registry import TASKS

# topology -> (latent_mas builder, text_mas builder), as the references name them
TEAM_BUILDERS = {
    "sequential": ("build_agent_message_sequential_latent_mas", "build_agent_messages_sequential_text_mas"),
    "hierarchical": ("build_agent_message_hierarchical_latent_mas", "build_agent_messages_hierarchical_text_mas"),
}
SINGLE_BUILDER = "build_agent_messages_single_agent"
FAMILY_METHOD = {"latent": "latent_mas", "text": "text_mas"}
# sentinels: plain ASCII without braces, unlikely in any prompt; the context one has distinct characters so that a
# cut shows which part survived
Q_SENTINEL = "QQQ7question7QQQ"
C_SENTINEL = "CCC7context7abcdefghijklmnopqrstuvwxyz7CCC"
CHECK_Q = "What is 12 + 30? {not a placeholder}"
CHECK_C = "[Other]:\nsome {braced} text\n\n"
PROBE_LENGTH = 9  # a second --text_mas_context_length, to tell a slice by that setting from a fixed cut
MODEL_STAND_IN = "Qwen/Qwen3-4B"  # the builders assert "qwen" in the model name
CONTEXT_FORMAT = "[{name}]:\n{text}\n\n"  # the references' text_mas hand-off, unless their text_mas.py says otherwise
BASELINE_AGENT = ("Solver", "solver")


class ImportTeamError(RunError):
    """The checkout cannot be imported at all; the message names the fix."""


class _Args(argparse.Namespace):
    """The reference's `args`: the settings its builders read, and None for anything else they look up."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return None


def stand_in_args(task: str, method: str, context_length: int = -1, settings: dict | None = None) -> _Args:
    """`settings`: what the reference's run.py adds to args from a prompt file (custom_prompts, ...)."""
    return _Args(model_name=MODEL_STAND_IN, task=task, method=method, prompt="sequential",
                 text_mas_context_length=context_length, think=None, latent_steps=0, do_not_enforce_qwen=False,
                 **(settings or {}))


@dataclass
class Reference:
    """What the importer read from a checkout."""

    root: Path
    prompts_file: Path
    builders: object  # the loaded prompts module
    agents: list[tuple[str, str]]  # (name, role) in order
    commit: str | None = None
    think: str | None = None  # what --think appends there, if the checkout shows it
    name_map: dict[str, str] = field(default_factory=dict)  # hierarchical text_mas labels of handed-on text
    context_format: str = CONTEXT_FORMAT
    notes: list[str] = field(default_factory=list)
    prompt_file: Path | None = None  # the --custom_prompt_file read, if any
    settings: dict = field(default_factory=dict)  # the args fields run.py sets from it


def _load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise ImportTeamError(f"{path}: cannot load it ({type(e).__name__}: {e})") from None
    return module


def _commit(root: Path) -> str | None:
    """The checkout's commit, when REF_DIR is the top of a git work tree (not a folder inside another repository)."""
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel", "HEAD"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.split()
    if out.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != root.resolve():
        return None
    return lines[1]


def _tree(path: Path) -> ast.Module | None:
    try:
        return ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None


def find_think(root: Path) -> str | None:
    """The string --think appends: run.py's `const=` for --think (the Science branch), else the literal the latent
    method appends after the prompt (main, kNN-LatentMAS: f"{prompt}<think>")."""
    tree = _tree(root / "run.py")
    for node in ast.walk(tree) if tree else ():
        if (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
                and node.args[0].value == "--think"):
            for kw in node.keywords:
                if kw.arg == "const" and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                    return kw.value.value
    tree = _tree(root / "methods" / "latent_mas.py")
    for node in ast.walk(tree) if tree else ():
        if isinstance(node, ast.JoinedStr):
            for part in node.values:
                if isinstance(part, ast.Constant) and isinstance(part.value, str) and "<think>" in part.value:
                    return part.value
    return None


def find_text_handoff(root: Path, names: list[str]) -> tuple[str | None, dict[str, str]]:
    """From methods/text_mas.py: the f-string that labels an agent's text for the next ones ("[{name}]:\\n{text}\\n\\n"
    with two values) and the dict literal mapping agent names to other labels (hierarchical), found as the one that
    holds every name in `names` (the default agents); all its entries are returned."""
    tree = _tree(root / "methods" / "text_mas.py")
    fmt, name_map = None, {}
    for node in ast.walk(tree) if tree else ():
        if isinstance(node, ast.JoinedStr) and fmt is None:
            parts, values = [], 0
            for part in node.values:
                if isinstance(part, ast.Constant):
                    parts.append(str(part.value).replace("{", "{{").replace("}", "}}"))
                else:
                    parts.append("{name}" if values == 0 else "{text}")
                    values += 1
            text = "".join(parts)
            if values == 2 and text.startswith("[{name}]") and text.endswith("{text}\n\n"):
                fmt = text
        if isinstance(node, ast.Dict) and node.keys and all(
                isinstance(k, ast.Constant) and isinstance(k.value, str) for k in node.keys) and all(
                isinstance(v, ast.Constant) and isinstance(v.value, str) for v in node.values):
            mapping = {k.value: v.value for k, v in zip(node.keys, node.values)}
            if names and all(n in mapping for n in names):
                name_map = mapping
    return fmt, name_map


def reads_prompt_files(root: Path) -> bool:
    """Whether the checkout's run.py declares --custom_prompt_file (read with ast)."""
    tree = _tree(root / "run.py")
    return any(isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
               and node.args[0].value == "--custom_prompt_file" for node in (ast.walk(tree) if tree else ()))


def read_prompt_file(path: Path, agent_class=None) -> tuple[dict, list[tuple[str, str]]]:
    """The args fields the Science branch's run.py sets from --custom_prompt_file, and the agents it names.

    As that run.py reads it: JSON that parses is kept whole as custom_prompts (its builders use it when it is an
    object: role-keyed templates, "system"); an object's "baseline" (else "user") becomes custom_prompt_text and its
    "agents" entries that have a name and a role become custom_agents; text that is not JSON is kept as both."""
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ImportTeamError(f"{path}: cannot read the prompt file ({e.strerror})") from None
    except UnicodeDecodeError:
        raise ImportTeamError(f"{path}: the prompt file is not UTF-8 text") from None
    if not raw.strip():
        raise ImportTeamError(f"{path}: the prompt file is empty (the reference refuses it too)")
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError:
        return {"custom_prompts": raw, "custom_prompt_text": raw, "custom_agents": None}, []
    except RecursionError:
        raise ImportTeamError(f"{path}: the prompt file nests too deeply") from None
    settings = {"custom_prompts": parsed, "custom_prompt_text": None, "custom_agents": None}
    agents = []
    if isinstance(parsed, dict):
        settings["custom_prompt_text"] = parsed.get("baseline") or parsed.get("user")
        if isinstance(parsed.get("agents"), list):
            agents = [(d.get("name", ""), d.get("role", "")) for d in parsed["agents"]
                      if isinstance(d, dict) and "name" in d and "role" in d]
            make = agent_class or (lambda name, role: (name, role))
            settings["custom_agents"] = [make(name=n, role=r) for n, r in agents]
    bad = [x for pair in agents for x in pair if not isinstance(x, str)]
    if bad:
        raise ImportTeamError(f"{path}: agent names and roles must be strings, not {bad[0]!r}")
    return settings, agents


def _find_prompt_file(root: Path, prompt_file: str | Path) -> Path:
    """FILE as given, else inside the checkout (import-team REF --prompt_file prompts_advanced.json)."""
    path = Path(prompt_file)
    if not path.is_file() and not path.is_absolute() and (root / path).is_file():
        path = root / path
    if not path.is_file():
        raise ImportTeamError(f"{prompt_file}: no such prompt file (looked here and in {root})")
    return path


def load_reference(root: str | Path, prompts: str = "prompts.py", prompt_file: str | Path | None = None) -> Reference:
    root = Path(root)
    if not root.is_dir():
        raise ImportTeamError(f"{root}: not a folder; give the root of a reference checkout (it holds prompts.py)")
    prompts_file = root / prompts
    if not prompts_file.is_file():
        raise ImportTeamError(f"{prompts_file}: no such file; give the root of a reference checkout (the public "
                              "LatentMAS code or kNN-LatentMAS)")
    builders = _load_module(prompts_file, "_reference_prompts")
    if not any(hasattr(builders, b) for pair in TEAM_BUILDERS.values() for b in pair) \
            and not hasattr(builders, SINGLE_BUILDER):
        raise ImportTeamError(f"{prompts_file}: none of the builders {', '.join(TEAM_BUILDERS['sequential'])}, "
                              f"{SINGLE_BUILDER}, ...; is this a LatentMAS checkout?")
    notes = []
    agents_file = root / "methods" / "__init__.py"
    agents, module = [], None
    if agents_file.is_file():
        module = _load_module(agents_file, "_reference_methods")
        if callable(getattr(module, "default_agents", None)):
            agents = [(str(a.name), str(a.role)) for a in module.default_agents()]
    if not agents:
        agents = [("Planner", "planner"), ("Critic", "critic"), ("Refiner", "refiner"), ("Judger", "judger")]
        notes.append(f"{agents_file}: no default_agents(); using planner, critic, refiner, judger")
    fmt, name_map = find_text_handoff(root, [n for n, _ in agents])
    settings, path = {}, None
    if prompt_file is not None:
        if not reads_prompt_files(root):
            raise ImportTeamError(f"{root / 'run.py'} has no --custom_prompt_file: this checkout reads no prompt "
                                  "files (the Science-LatentMAS branch does)")
        path = _find_prompt_file(root, prompt_file)
        agent_class = getattr(module, "Agent", None) if agents_file.is_file() else None
        settings, custom = read_prompt_file(path, agent_class if isinstance(agent_class, type) else None)
        agents = custom or agents  # the reference's methods: args.custom_agents or default_agents()
    elif reads_prompt_files(root):
        shipped = sorted(p.name for p in root.glob("*.json"))
        notes.append("its run.py also reads --custom_prompt_file (JSON agents and prompts); "
                     + (f"this checkout ships {', '.join(shipped)}: " if shipped else "")
                     + "import one with --prompt_file FILE")
    return Reference(root, prompts_file, builders, agents, _commit(root), find_think(root), name_map,
                     fmt or CONTEXT_FORMAT, notes, path, settings)


class Rejected(Exception):
    """A builder refused a task (or gave something that is not a template of question and context)."""


def _messages(fn, *args, **kwargs) -> tuple[str | None, str]:
    """(system, user) of a builder's chat messages."""
    try:
        msgs = fn(*args, **kwargs)
    except Exception as e:  # the builder's own refusal: NotImplementedError, an unset prompt, an assertion
        raise Rejected(f"{type(e).__name__}: {' '.join(str(e).split())[:120]}") from None
    roles = [m.get("role") for m in msgs] if isinstance(msgs, list) and all(isinstance(m, dict) for m in msgs) else []
    if roles not in (["system", "user"], ["user"]):
        raise Rejected(f"returned {roles or type(msgs).__name__}, not [system,] user messages")
    return (msgs[0]["content"] if roles[0] == "system" else None), msgs[-1]["content"]


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _template(user: str, context_cut: str | None) -> str:
    """The builder's user text with the sentinels as placeholders and every other brace escaped."""
    text = _escape(user)
    if context_cut == "python_slice":
        text = text.replace(C_SENTINEL[:-1], "{context}")
    elif context_cut == "none":
        text = text.replace(C_SENTINEL, "{context}")
    return text.replace(Q_SENTINEL, "{question}")


def _context_cut(fn, role: str, task: str, method: str, user: str, settings: dict | None = None) -> str | None:
    """How the builder cuts the context: None (not used), "none" (whole), "python_slice" (context[:N] with N =
    --text_mas_context_length). Anything else is rejected."""
    if C_SENTINEL in user:
        return "none"
    if C_SENTINEL[:-1] not in user:
        if C_SENTINEL[:4] in user or C_SENTINEL[-4:] in user:  # a part of the context, not its first N-1 chars
            raise Rejected("the context is cut in a way the importer does not know (not context[:N])")
        return None
    _, probe = _messages(fn, role=role, question=Q_SENTINEL, context=C_SENTINEL, method=method,
                         args=stand_in_args(task, method, PROBE_LENGTH, settings))
    if C_SENTINEL[:PROBE_LENGTH] in probe and C_SENTINEL[:PROBE_LENGTH + 1] not in probe:
        return "python_slice"
    raise Rejected("the context is cut by something other than --text_mas_context_length")


def python_slice(context: str, n: int) -> str:
    """The references' cut of handed-on text: context[:n] characters (n = -1 drops the last one)."""
    return context[:n]


def import_agent(fn, role: str, task: str, family: str,
                 settings: dict | None = None) -> tuple[str | None, str, str | None]:
    """(system, template, context_cut) of one agent from one builder, checked by re-rendering."""
    method = FAMILY_METHOD[family]
    system, user = _messages(fn, role=role, question=Q_SENTINEL, context=C_SENTINEL, method=method,
                             args=stand_in_args(task, method, settings=settings))
    cut = _context_cut(fn, role, task, method, user, settings)
    template = _template(user, cut)
    for n in (-1, PROBE_LENGTH):  # the template must give what the builder gives, for other values too
        want_sys, want = _messages(fn, role=role, question=CHECK_Q, context=CHECK_C, method=method,
                                   args=stand_in_args(task, method, n, settings))
        ctx = python_slice(CHECK_C, n) if cut == "python_slice" else CHECK_C
        if template.format(question=CHECK_Q, context=ctx) != want or want_sys != system:
            raise Rejected("its output is not the same template for other questions and contexts")
    return system, template, cut


def import_team(ref: Reference, topology: str, task: str) -> dict:
    """One team file's content (raises Rejected with the reason)."""
    names = TEAM_BUILDERS[topology]
    missing = [b for b in names if not hasattr(ref.builders, b)]
    if missing:
        raise Rejected(f"{ref.prompts_file.name} has no {', '.join(missing)}")
    agents, cuts = [], set()
    for name, role in ref.agents:
        prompt, systems = {}, set()
        for family, builder in zip(("latent", "text"), names):
            try:
                system, template, cut = import_agent(getattr(ref.builders, builder), role, task, family,
                                                     ref.settings)
            except Rejected as e:
                raise Rejected(f"{builder}(role={role!r}): {e}") from None
            prompt[family] = template
            systems.add(system)
            if cut is not None and family == "text":
                cuts.add(cut)
        if len(systems) > 1:
            raise Rejected(f"agent {name}: the latent and text builders give different system messages")
        agents.append({"name": name, "role": role, "system": systems.pop() or "", "prompt": prompt})
    if len(cuts) > 1:
        raise Rejected("agents cut the handed-on text differently")
    team = {"description": f"{topology} team imported from {ref.root.name} for {task} ({', '.join(names)})",
            "reference": _provenance(ref, topology, task, list(names)),
            "context_format": ref.context_format,
            "context_cut": cuts.pop() if cuts else "none",
            "agents": agents}
    names = {n: ref.name_map[n] for n, _ in ref.agents if n in ref.name_map}  # others keep their name
    if topology == "hierarchical" and names:
        team["context_names"] = names
    return team


def import_baseline(ref: Reference, task: str) -> dict:
    fn = getattr(ref.builders, SINGLE_BUILDER, None)
    if fn is None:
        raise Rejected(f"{ref.prompts_file.name} has no {SINGLE_BUILDER}")
    try:
        system, user = _messages(fn, question=Q_SENTINEL, args=stand_in_args(task, "baseline", settings=ref.settings))
        template = _template(user, None)
        want_sys, want = _messages(fn, question=CHECK_Q, args=stand_in_args(task, "baseline", settings=ref.settings))
        if template.format(question=CHECK_Q) != want or want_sys != system:
            raise Rejected("its output is not the same template for another question")
    except Rejected as e:
        raise Rejected(f"{SINGLE_BUILDER}: {e}") from None
    name, role = BASELINE_AGENT
    return {"description": f"single agent imported from {ref.root.name} for {task} ({SINGLE_BUILDER})",
            "reference": _provenance(ref, "baseline", task, [SINGLE_BUILDER]),
            "agents": [{"name": name, "role": role, "system": system or "", "prompt": template}]}


def _provenance(ref: Reference, topology: str, task: str, builders: list[str]) -> dict:
    out = {"checkout": str(ref.root), "commit": ref.commit, "prompts": ref.prompts_file.name,
           "builders": builders, "topology": topology, "task": task}
    if ref.prompt_file is not None:
        out["prompt_file"] = str(ref.prompt_file)
    if ref.think is not None:
        out["think"] = ref.think  # what the reference's --think appends: give it as --think STRING to match
    return out


def _dump(team: dict, path: Path) -> None:
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper, value):  # multi-line prompts as blocks where YAML allows it (it falls back to quotes)
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    Dumper.add_representer(str, text)
    path.write_text(yaml.dump(team, Dumper=Dumper, sort_keys=False, allow_unicode=True, width=1000),
                    encoding="utf-8")


def _same_prompts(a: dict, b: dict) -> bool:
    return {k: v for k, v in a.items() if k not in ("description", "reference")} == \
        {k: v for k, v in b.items() if k not in ("description", "reference")}


def _build(ref: Reference, topology: str, task: str) -> dict:
    return import_baseline(ref, task) if topology == "baseline" else import_team(ref, topology, task)


def import_all(root: str | Path, out: str | Path, tasks=None, prompts: str = "prompts.py",
               echo=print, prompt_file: str | Path | None = None) -> list[Path]:
    """Write every team the reference's builders accept; one line per skipped team. Returns the files written.
    With `prompt_file` the builders see it as the reference's run.py hands it to them; a closing line says how many
    of the written teams it changed (the others are what the builders give without it)."""
    from teams import TeamError, load_team

    ref = load_reference(root, prompts, prompt_file)
    plain = load_reference(root, prompts) if prompt_file is not None else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for note in ref.notes:
        echo(f"note: {note}")
    written, changed = [], 0
    for task in tasks or TASKS:
        for topology in (*TEAM_BUILDERS, "baseline"):
            try:
                team = _build(ref, topology, task)
            except Rejected as e:
                echo(f"skipped {topology}_{task}: {e}")
                continue
            if plain is not None:
                try:
                    changed += not _same_prompts(team, _build(plain, topology, task))
                except Rejected:
                    changed += 1
            path = out / f"{topology}_{task}.yaml"
            _dump(team, path)
            try:
                load_team(path)  # what we write must load
            except TeamError as e:
                path.unlink()
                echo(f"skipped {topology}_{task}: the team file would not load ({e})")
                continue
            written.append(path)
    if plain is not None:
        echo(f"{ref.prompt_file} changed {changed} of the {len(written)} team files; the others are what the "
             "builders give without it")
    think = f"; its --think appends {ref.think!r} (give --think {ref.think!r})" if ref.think is not None else ""
    echo(f"imported {len(written)} team files from {ref.root} ({ref.commit or 'no git commit'}) into {out}{think}")
    return written


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Write team files from a reference checkout's own prompt builders (the public LatentMAS code, "
                     "its Science-LatentMAS branch, kNN-LatentMAS): DIR/<topology>_<task>.yaml and "
                     "DIR/baseline_<task>.yaml for every task the builders accept.")
    p.add_argument("ref_dir", metavar="REF_DIR", help="root of the reference checkout (holds prompts.py)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the team files")
    p.add_argument("--task", action="append", choices=tuple(TASKS), help="only this task (repeatable); default: all")
    p.add_argument("--prompts", default="prompts.py", metavar="FILE",
                   help="the builders' file inside REF_DIR (kNN-LatentMAS's stacked prompts: 'prompts v2.py')")
    p.add_argument("--prompt_file", metavar="FILE",
                   help="a file for the reference's --custom_prompt_file (Science-LatentMAS: JSON with 'agents' and "
                        "role-keyed templates, or plain text), read as its run.py reads it; a relative path is also "
                        "looked up in REF_DIR")


def command(args) -> int:
    """python run.py import-team: exit 0 when at least one team file was written, 1 when none."""
    try:
        files = import_all(args.ref_dir, args.out, args.task, args.prompts, prompt_file=args.prompt_file)
    except OSError as e:
        raise ImportTeamError(f"cannot write into {args.out}: {e.strerror}") from None
    return 0 if files else 1


if __name__ == "__main__":
    sys.exit(__import__("run").main(["import-team", *sys.argv[1:]]))
