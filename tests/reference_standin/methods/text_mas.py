"""Stand-in (tests only): the importer reads the hand-off label and the hierarchical name map with ast."""
LABELS = {"Alpha": "First Expert", "Beta": "Second Expert", "Gamma": "Third Expert", "Omega": "Summary"}


def label(name, text, hierarchical):
    shown = LABELS[name] if hierarchical else name
    return f"[{shown}]:\n{text}\n\n"
