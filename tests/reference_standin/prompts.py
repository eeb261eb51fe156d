"""Stand-in builders (tests only): task branches, literal braces, a sliced context, a task that is rejected."""

SYSTEM = "You are a test assistant."
MATH = ("gsm8k", "aime2024", "aime2025")
CHOICE = ("gpqa", "medqa", "arc_easy", "arc_challenge")


def _answer(task):
    if task in MATH:
        return "Write the number as \\boxed{{N}}; {{braces}} stay."
    if task in CHOICE:
        return "Write one letter as \\boxed{{X}}."
    raise NotImplementedError(f"no answer line for {task}")


def build_agent_message_sequential_latent_mas(role, question, context="", method=None, args=None):
    assert method in ["latent_mas"], "latent only"
    assert "qwen" in args.model_name.lower(), "qwen only"
    if role == "judger":
        user = f"Q: {question}\n{_answer(args.task).format()}\n"
    else:
        user = f"As {role}, think about: {question}\n"
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def build_agent_messages_sequential_text_mas(role, question, context="", method=None, args=None):
    assert method in ["text_mas"], "text only"
    ctx = context[: args.text_mas_context_length]
    if role == "planner":
        user = f"Plan for: {question}"
    elif role == "judger":
        user = f"Notes:\n{ctx}\nQ: {question}\n{_answer(args.task).format()}"
    else:
        user = f"Notes:\n{ctx}\nAs {role}, improve them. Q: {question}"
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


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
