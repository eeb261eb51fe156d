"""Stand-in (tests only): the importer reads with ast that this run.py takes a prompt file; never executed."""
import argparse


def parse():
    p = argparse.ArgumentParser()
    p.add_argument("--custom_prompt_file", default=None, help="JSON with agents and per-role prompts, or text")
    return p.parse_args()
