"""Agent teams as data: a JSON or YAML file lists the agents in order; the last one writes the answer.

    {"description": "...",
     "agents": [{"name": "Planner", "role": "planner", "prompt": "... {question} ...", "mode": "latent",
                 "system": "You are a helpful assistant.", "model": "Qwen/Qwen3-4B"}, ...]}

`prompt` is one template, or {"latent": ..., "text": ...} when latent_mas and text_mas should differ. Templates
may use {question}, {context} (text handed on by earlier agents: text_mas only) and {answer} (the task's
answer-format sentence); write literal braces as {{ and }}. `mode` (latent_mas): "latent" thinks in latent steps,
"text" writes text onto the shared cache; the last agent always writes. `system` defaults to DEFAULT_SYSTEM;
null or "" sends no system message. `model` (hub id, local folder or embedded alias; default: the run's
--model_name) runs that agent on its own model: agents of one model share its cache; what crosses to another model is
decided by `cross_model_plan` (text, or mapped latents with --cross_model latent-map).

Team-level settings for text_mas's hand-off (an imported reference team sets them to reproduce its code):
`context_format` (how one agent's text is labelled for the next ones; default "[{name}]:\n{text}\n\n"),
`context_names` ({agent name: label} used for {name}; the reference's hierarchical text_mas relabels its agents),
`context_cut` ("tail_tokens", the default: --text_mas_context_length N keeps the last N tokens, -1 all;
"python_slice": the reference's context[:N] in characters, whose default -1 drops the last character; "none").
`reference` records where an imported team came from (reference_import.py).
"""
from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

from errors import RunError

TEAMS_DIR = Path(__file__).resolve().parent / "teams"
PLACEHOLDERS = ("question", "context", "answer")
FAMILIES = ("latent", "text")
MODES = ("latent", "text")
FIELDS = ("name", "role", "prompt", "system", "mode", "model")
DEFAULT_SYSTEM = "You are a helpful assistant."
CONTEXT_FORMAT = "[{name}]:\n{text}\n\n"
CONTEXT_CUTS = ("tail_tokens", "python_slice", "none")
TEAM_FIELDS = ("description", "agents", "context_format", "context_names", "context_cut", "reference")


class TeamError(RunError):
    """A team file is unusable; the message names the file, the agent and the fix."""


@dataclass(frozen=True)
class AgentSpec:
    name: str
    role: str
    prompts: tuple[tuple[str, str], ...]  # (family, template) pairs
    system: str | None = DEFAULT_SYSTEM
    mode: str = "latent"
    model: str | None = None  # None: the run's --model_name

    def template(self, family: str) -> str:
        return dict(self.prompts)[family]


@dataclass(frozen=True)
class Team:
    agents: tuple[AgentSpec, ...]
    source: str
    description: str = ""
    context_format: str = CONTEXT_FORMAT
    context_names: tuple[tuple[str, str], ...] = ()
    context_cut: str = "tail_tokens"
    reference: dict | None = None

    def as_dict(self) -> dict:
        out = {"source": self.source, "description": self.description,
               "agents": [{"name": a.name, "role": a.role, "mode": a.mode, "system": a.system,
                           "prompt": dict(a.prompts), **({"model": a.model} if a.model else {})}
                          for a in self.agents]}
        if self.context_format != CONTEXT_FORMAT:
            out["context_format"] = self.context_format
        if self.context_names:
            out["context_names"] = dict(self.context_names)
        if self.context_cut != "tail_tokens":
            out["context_cut"] = self.context_cut
        if self.reference:
            out["reference"] = self.reference
        return out

    def handed_on(self, agent: AgentSpec, text: str) -> str:
        """How one agent's text reaches the next ones in text_mas (the context's part for this agent)."""
        return self.context_format.format(name=dict(self.context_names).get(agent.name, agent.name), text=text)

    def model_names(self, default: str) -> tuple[str, ...]:
        """Each agent's model as named (its `model`, else `default`, the run's --model_name)."""
        return tuple(a.model or default for a in self.agents)


def _check_template(text: object, where: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise TeamError(f"{where}: the prompt must be a non-empty string")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    except ValueError as e:
        raise TeamError(f"{where}: {e}; write literal braces as {{{{ and }}}}") from None
    unknown = sorted({f for f in fields if f not in PLACEHOLDERS})
    if unknown:
        raise TeamError(f"{where}: unknown placeholder(s) {', '.join('{' + f + '}' for f in unknown)}; allowed: "
                        f"{', '.join('{' + p + '}' for p in PLACEHOLDERS)} (literal braces: {{{{ and }}}})")
    return text


def _parse_agent(raw: object, i: int, n: int, source: str) -> AgentSpec:
    if not isinstance(raw, dict):
        raise TeamError(f"{source}: agent #{i + 1} must be an object with name, role and prompt")
    name = raw.get("name")
    where = f"{source}: agent #{i + 1} ({name or 'unnamed'})"
    missing = [k for k in ("name", "prompt") if not raw.get(k)]
    if missing:
        raise TeamError(f"{where}: missing {', '.join(missing)}")
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise TeamError(f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(FIELDS)}")
    model = raw.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise TeamError(f"{where}: model must be a hub id, a local model folder or an embedded alias (a non-empty "
                        "string), or left out for the run's --model_name")
    prompt = raw["prompt"]
    if isinstance(prompt, str):
        prompts = {f: prompt for f in FAMILIES}
    elif isinstance(prompt, dict) and set(prompt) <= set(FAMILIES) and prompt:
        prompts = {f: prompt.get(f) or next(iter(prompt.values())) for f in FAMILIES}
    else:
        raise TeamError(f"{where}: prompt must be a string or an object with keys latent and/or text")
    prompts = {f: _check_template(t, f"{where} prompt[{f}]") for f, t in prompts.items()}
    mode = raw.get("mode", "text" if i == n - 1 else "latent")
    if mode not in MODES:
        raise TeamError(f"{where}: mode must be one of {', '.join(MODES)}, not {mode!r}")
    if i == n - 1 and mode != "text":
        raise TeamError(f"{where}: the last agent writes the answer, so its mode must be text (or left out)")
    system = raw.get("system", DEFAULT_SYSTEM)
    return AgentSpec(name=str(name), role=str(raw.get("role") or name).lower(),
                     prompts=tuple((f, prompts[f]) for f in FAMILIES), system=system or None, mode=mode,
                     model=model.strip() if model else None)


def parse_team(data: object, source: str) -> Team:
    if isinstance(data, list):
        data = {"agents": data}
    if not isinstance(data, dict) or not isinstance(data.get("agents"), list) or not data["agents"]:
        raise TeamError(f"{source}: a team file needs a non-empty list under \"agents\"; the last agent writes "
                        "the answer")
    unknown = sorted(set(data) - set(TEAM_FIELDS) - {"source"})
    if unknown:
        raise TeamError(f"{source}: unknown field(s) {', '.join(unknown)}; a team file holds {', '.join(TEAM_FIELDS)}")
    raw_agents = data["agents"]
    agents = tuple(_parse_agent(a, i, len(raw_agents), source) for i, a in enumerate(raw_agents))
    names = [a.name for a in agents]
    dupes = sorted({x for x in names if names.count(x) > 1})
    if dupes:
        raise TeamError(f"{source}: agent names must be unique; repeated: {', '.join(dupes)}")
    fmt = data.get("context_format", CONTEXT_FORMAT)
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(fmt) if f is not None} if isinstance(fmt, str) else None
    except ValueError:
        fields = None
    if not fields or not fields <= {"name", "text"} or "text" not in fields:
        raise TeamError(f"{source}: context_format must be a string with {{text}} (and optionally {{name}}), e.g. "
                        f"{CONTEXT_FORMAT!r}; literal braces as {{{{ and }}}}")
    cut = data.get("context_cut", "tail_tokens")
    if cut not in CONTEXT_CUTS:
        raise TeamError(f"{source}: context_cut must be one of {', '.join(CONTEXT_CUTS)}, not {cut!r}")
    names_map = data.get("context_names") or {}
    if not isinstance(names_map, dict) or not all(isinstance(v, str) for v in names_map.values()):
        raise TeamError(f"{source}: context_names must map agent names to labels")
    ref = data.get("reference")
    if ref is not None and not isinstance(ref, dict):
        raise TeamError(f"{source}: reference must be a mapping (where an imported team came from)")
    return Team(agents, source, str(data.get("description", "")), fmt, tuple((str(k), v) for k, v in names_map.items()),
                cut, ref)


def load_team(path: str | Path) -> Team:
    """A team file, read as strictly as experiment files (a key twice, alias bombs and NaN refused)."""
    import strictfiles

    path = Path(path)
    fmt = "yaml" if path.suffix.lower() in (".yaml", ".yml") else "json"
    try:
        data = strictfiles.parse(strictfiles.read_text(path), fmt)
    except OSError as e:
        raise TeamError(f"cannot read team file {path}: {e.strerror}; give --agents a JSON or YAML file") from None
    except UnicodeDecodeError:
        raise TeamError(f"{path} is not UTF-8 text (a binary file?); give --agents a JSON or YAML team file "
                        "(see teams/)") from None
    except strictfiles.DocumentError as e:
        raise TeamError(f"{path}: {strictfiles.clip(e)}") from None
    return parse_team(data, str(path))


def default_team(topology: str) -> Team:
    """The shipped team file behind a --prompt topology."""
    from registry import TOPOLOGIES

    return load_team(TEAMS_DIR / TOPOLOGIES[topology][0])


def with_first_agent_text(team: Team) -> Team:
    """The --first_agent_text shortcut: the first agent writes text onto the shared cache."""
    from dataclasses import replace

    return replace(team, agents=(replace(team.agents[0], mode="text"), *team.agents[1:]))


def senders(keys: tuple[str, ...], flow: str) -> list[tuple[int, int]]:
    """The cross-model hand-offs of a team whose agents run on the models `keys` (one identity per agent): (sender,
    receiver) pairs. In a chain the agent just before a change of model hands on to the agent after it (what earlier
    agents did reaches the receiver through the sender); in a parallel team every worker on another model than the
    last agent hands on to it."""
    last = len(keys) - 1
    if flow == "parallel":
        return [(j, last) for j in range(last) if keys[j] != keys[last]]
    return [(k - 1, k) for k in range(1, len(keys)) if keys[k - 1] != keys[k]]


def cross_model_plan(team: Team, keys: tuple[str, ...], flow: str, cross_model: str = "text",
                     method: str = "latent_mas") -> tuple[Team, list[str]]:
    """latent_mas across models: the team as it runs and one notice per change. A latent sender whose receiver is on
    another model writes text instead (its latents mean nothing to another model) unless --cross_model latent-map
    maps them; the notice names the agent. Other methods (every agent writes) are returned unchanged."""
    from dataclasses import replace

    if method != "latent_mas" or cross_model == "latent-map":
        return team, []
    agents, notices = list(team.agents), []
    for j, k in senders(keys, flow):
        if agents[j].mode == "latent":
            agents[j] = replace(agents[j], mode="text")
            notices.append(f"agent {agents[j].name} hands on to {agents[k].name} on another model: it writes text "
                           "instead of latent steps (--cross_model latent-map maps latents across models that share "
                           "a tokenizer)")
    return (replace(team, agents=tuple(agents)) if notices else team), notices


def single_agent(team: Team) -> Team:
    """A team for baseline: exactly one agent, whose text prompt answers the question."""
    if len(team.agents) != 1:
        raise TeamError(f"{team.source}: baseline takes a one-agent team, this one has {len(team.agents)}; use "
                        "--method text_mas or latent_mas for a team")
    return team
