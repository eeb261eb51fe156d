"""The code sandbox's mechanisms, one job per file; code_eval.py is its public face and program runner."""
