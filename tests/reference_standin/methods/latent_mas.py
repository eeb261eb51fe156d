"""Stand-in (tests only): what --think appends, read by the importer with ast."""


def wrap(prompt, think):
    return f"{prompt}<think>" if think else prompt
