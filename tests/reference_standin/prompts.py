"""Stand-in builders (tests only): task branches, literal braces, a sliced context, a task that is rejected, and
agents and prompts from a prompt file (args.custom_prompts, set by run.py --custom_prompt_file)."""

SYSTEM = "You are a test assistant."
MATH = ("gsm8k", "aime2024", "aime2025")
CHOICE = ("gpqa", "medqa", "arc_easy", "arc_challenge")


def _answer(task):
    if task in MATH:
        return "Write the number as \\boxed{{N}}; {{braces}} stay."
    if task in CHOICE:
        return "Write one letter as \\boxed{{X}}."
    raise NotImplementedError(f"no answer line for {task}")


def _from_file(role, question, context, args):
    """(system, user) from a prompt file: a template per role (one that does not format is taken as it stands) and
    an optional "system" ("" for none); None where the file says nothing."""
    given = getattr(args, "custom_prompts", None)
    if not isinstance(given, dict):
        return SYSTEM, None
    system = given.get("system", SYSTEM) or None
    if role not in given:
        return system, None
    try:
        return system, given[role].format(question=question, context=context)
    except (KeyError, IndexError, ValueError):
        return system, given[role]


def _messages(system, user):
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]


def build_agent_message_sequential_latent_mas(role, question, context="", method=None, args=None):
    assert method in ["latent_mas"], "latent only"
    assert "qwen" in args.model_name.lower(), "qwen only"
    system, user = _from_file(role, question, context, args)
    if role == "judger":
        user = f"Q: {question}\n{_answer(args.task).format()}\n"
    elif user is None:
        user = f"As {role}, think about: {question}\n"
    return _messages(system, user)


def build_agent_messages_sequential_text_mas(role, question, context="", method=None, args=None):
    assert method in ["text_mas"], "text only"
    ctx = context[: args.text_mas_context_length]
    system, user = _from_file(role, question, ctx, args)
    if role == "planner":
        user = f"Plan for: {question}"
    elif role == "judger":
        user = f"Notes:\n{ctx}\nQ: {question}\n{_answer(args.task).format()}"
    elif user is None:
        user = f"Notes:\n{ctx}\nAs {role}, improve them. Q: {question}"
    return _messages(system, user)


def build_agent_message_hierarchical_latent_mas(role, question, context="", method=None, args=None):
    assert method in ["latent_mas"], "latent only"
    if args.task in MATH:
        user = f"[{role} expert] {question}"
    return [{"role": "user", "content": user}]  # no system message; unset user for other tasks: an UnboundLocalError


def build_agent_messages_hierarchical_text_mas(role, question, context="", method=None, args=None):
    assert method in ["text_mas"], "text only"
    if args.task in MATH:
        user = f"[{role} expert] {question}" + (f"\nExperts said:\n{context[:args.text_mas_context_length]}"
                                                 if role == "judger" else "")
    return [{"role": "user", "content": user}]


def build_agent_messages_single_agent(question, args=None):
    assert args.method in ["baseline"], "baseline only"
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Solve {{exactly}}: {question}\n{_answer(args.task).format()}"}]
