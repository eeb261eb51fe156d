"""The numbers of a report: one row per run and per method, seeds of one setting summarised, each run paired with a
reference over the same items (stats.py), published accuracies matched to runs, and the notes on what differs."""
from __future__ import annotations

import json
from pathlib import Path

import stats
from report.runs import WITHIN_GROUP, ReportError, Run, base_label, within_group_differences

PUBLISHED = Path(__file__).resolve().parents[1] / "config" / "paper" / "published.yaml"


def run_row(group: str, r: Run) -> dict:
    s = r.summary
    ci = s.get("accuracy_ci95") or [None, None]
    return {"group": group, "run": r.path.name, "path": str(r.path), "label": r.label, "method": r.method,
            "model": s.get("model"), "task": s.get("task"), "data_source": r.group_key[2],
            "prompt": s.get("prompt"), "latent_steps": s.get("latent_steps"), "compression": r.compression,
            "n": s.get("n"), "complete": s.get("complete"), "correct": s.get("correct"),
            "accuracy": s.get("accuracy"), "accuracy_ci95": ci,
            "kv_tokens_judger_mean": s.get("kv_tokens_judger_mean"),
            "kv_bytes_judger_mean": s.get("kv_bytes_judger_mean"),
            "kv_kept_share_judger_mean": s.get("kv_kept_share_judger_mean"),
            "time_per_sample_s": s.get("time_per_sample_s"), "generated_tokens_mean": s.get("generated_tokens_mean"),
            "compress_time_mean_s": s.get("compress_time_mean_s"),
            "fidelity_agreement_mean": s.get("fidelity_agreement_mean"), "fidelity_kl_mean": s.get("fidelity_kl_mean"),
            "fidelity_output_match_rate": s.get("fidelity_output_match_rate"), "data_note": s.get("data_note")}


def method_rows(group: str, runs: list[Run]) -> list[dict]:
    """Per method of a group: time and generated tokens per item over all its runs (weighted by items)."""
    out = []
    for method in sorted({r.method for r in runs}):
        rs = [r for r in runs if r.method == method and r.get("n")]
        n = sum(r.get("n") for r in rs)
        if not n:
            continue
        out.append({"group": group, "method": method, "runs": len(rs), "items": n,
                    "time_per_item_s": sum(r.get("time_per_sample_s", 0) * r.get("n") for r in rs) / n,
                    "generated_tokens_per_item": sum(r.get("generated_tokens_mean", 0) * r.get("n") for r in rs) / n})
    return out


# --- seeds: runs of one setting that differ only in seed ---------------------------------------------------------

def cell_key(r: Run) -> tuple:
    """Everything that defines a setting except the seed: runs with equal keys are one cell of several seeds."""
    rest = (json.dumps(r.setting(k), sort_keys=True) for k in WITHIN_GROUP if k != "seed")
    return (r.group_key, r.method, r.get("prompt"), r.get("latent_steps"), json.dumps(r.compression, sort_keys=True),
            r.setting("top_p"), *rest)


def seed_cells(runs: list[Run]) -> list[list[Run]]:
    """The cells of a group, in the group's order; a cell holds every run of its setting (one or more seeds)."""
    cells: dict[tuple, list[Run]] = {}
    for r in runs:
        cells.setdefault(cell_key(r), []).append(r)
    return list(cells.values())


def seed_rows(group: str, runs: list[Run]) -> list[dict]:
    """One row per setting that ran with two or more runs: the spread of their accuracies across seeds."""
    out = []
    for cell in seed_cells(runs):
        if len(cell) < 2:
            continue
        spread = stats.t_interval([r.get("accuracy") or 0.0 for r in cell])
        out.append({"group": group, "setting": base_label(cell[0]), "runs": [r.path.name for r in cell],
                    "seeds": [r.get("seed") for r in cell], "n": [r.get("n") for r in cell],
                    "accuracy_mean": spread.mean, "accuracy_sd": spread.sd, "accuracy_min": spread.min,
                    "accuracy_max": spread.max, "accuracy_t_ci95": list(spread.ci),
                    "kv_bytes_judger_mean": mean_of(cell, "kv_bytes_judger_mean")})
    return out


def mean_of(runs: list[Run], key: str):
    xs = [r.get(key) for r in runs if r.get(key) is not None]
    return sum(xs) / len(xs) if xs else None


# --- paired comparisons: each run against a reference over the same items -------------------------------------------

def _same_setting_but_compression(a: Run, b: Run) -> bool:
    return all(a.get(k) == b.get(k) for k in ("prompt", "latent_steps")) and a.setting("agents") == b.setting("agents")


def reference_for(r: Run, runs: list[Run]) -> Run | None:
    """A compressed run's reference is the uncompressed run of its method and seed (the one with the same topology
    and latent steps if there is one); every other run's is the group's first run (baseline first). None: r is it."""
    if r.compression:
        plain = [u for u in runs if u is not r and u.method == r.method and not u.compression
                 and u.get("seed") == r.get("seed")]
        exact = [u for u in plain if _same_setting_but_compression(u, r)]
        if exact or plain:
            return (exact or plain)[0]
    return runs[0] if runs[0] is not r else None


def _outcomes(r: Run) -> dict[int, bool]:
    return {int(x["index"]): bool(x.get("correct")) for x in r.records if "index" in x}


def why_not_paired(a: Run, b: Run) -> str | None:
    """One line saying why two runs cannot be paired item by item, or None if they cover the same items."""
    if a.group_key != b.group_key:
        return "different model, task or data source"
    if a.setting("split") != b.setting("split"):
        return f"different splits ({a.setting('split')} vs {b.setting('split')})"
    ia, ib = set(_outcomes(a)), set(_outcomes(b))
    if not ia or not ib:
        return f"no per-item results in `{(a if not ia else b).path.name}`"
    if ia != ib:
        return f"different items ({len(ia)} vs {len(ib)} items, {len(ia & ib)} in common)"
    return None


def pair_row(group: str, r: Run, ref: Run) -> dict:
    a, b = _outcomes(r), _outcomes(ref)
    order = sorted(a)
    p = stats.paired_compare([a[i] for i in order], [b[i] for i in order])
    return {"group": group, "run": r.path.name, "label": r.label, "reference": ref.path.name,
            "reference_label": ref.label, "n": p.n, "accuracy": p.acc_a, "accuracy_reference": p.acc_b,
            "diff": p.diff, "diff_ci95_bootstrap": list(p.ci), "wins": p.wins, "losses": p.losses, "ties": p.ties,
            "p_mcnemar_exact": p.p_mcnemar, "compression": r.compression,
            "fidelity_agreement_mean": r.get("fidelity_agreement_mean"), "fidelity_kl_mean": r.get("fidelity_kl_mean"),
            "kv_bytes_judger_mean": r.get("kv_bytes_judger_mean"),
            "kv_bytes_judger_mean_reference": ref.get("kv_bytes_judger_mean")}


def pair_rows(groups: list[tuple[str, list[Run]]], baseline: Run | None = None) -> tuple[list[dict], list[str]]:
    """Every run against its reference (`baseline` for all, if given): the rows, and one line per refused pair."""
    rows, refused = [], []
    for name, runs in groups:
        for r in runs:
            ref = (baseline if baseline is not r else None) if baseline else reference_for(r, runs)
            if ref is None:
                continue
            reason = why_not_paired(r, ref)
            if reason:
                refused.append(f"`{r.label}` ({r.path.name}) is not paired with `{ref.label}` ({ref.path.name}): "
                               f"{reason}.")
            else:
                rows.append(pair_row(name, r, ref))
    return rows, refused


# --- published numbers: "paper vs this run" -----------------------------------------------------------------------

def load_published(path: Path | None) -> list[dict]:
    """The rows of a published-numbers file (see config/paper/published.yaml): each {source, short, settings,
    accuracy (a fraction), n}; [] without a file."""
    if path is None or not Path(path).exists():
        return []
    import yaml

    try:
        tables = (yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}).get("tables") or []
        rows = [{"source": t["source"], "short": t.get("short") or t["source"],
                 "settings": {**(t.get("settings") or {}), **{k: v for k, v in row.items()
                                                             if k not in ("accuracy", "n")}},
                 "accuracy": float(row["accuracy"]) / 100, "n": row.get("n", t.get("n"))}
                for t in tables for row in t["rows"]]
    except (OSError, ValueError, TypeError, KeyError, AttributeError, yaml.YAMLError) as e:
        raise ReportError(f"--published {path}: not a published-numbers file ({type(e).__name__}: {e}); see "
                          "config/paper/published.yaml") from None
    return rows


def _model_id(name) -> str:
    return Path(str(name).rstrip("/")).name.lower()


def _run_value(r: Run, key: str):
    c = r.compression or {}
    if key == "model":
        return r.get("model")
    if key == "kv_policy":
        return c.get("kv_policy", "none")
    if key in c:
        return c[key]
    return r.setting(key)


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b)) < 1e-9
    return a == b


def published_for(r: Run, published: list[dict]) -> list[dict]:
    """The published rows whose settings the run has: `model` by its last path component (case aside), a setting
    the run's method has no use for (None in its summary: prompt and latent_steps for baseline) skipped, and a row
    naming no kv_policy only for an uncompressed run."""
    out = []
    for row in published:
        settings = {"kv_policy": "none", **row["settings"]}
        ok = True
        for key, want in settings.items():
            have = _run_value(r, key)
            if key == "model":
                ok = have is not None and _model_id(have) == _model_id(want)
            elif have is not None:
                ok = _same(have, want)
            if not ok:
                break
        if ok:
            out.append(row)
    return out


# --- notes: what the reader must know before comparing ---------------------------------------------------------

def notes(groups: list[tuple[str, list[Run]]]) -> list[str]:
    """Groups that are not comparable, settings that vary within a group, partial runs, the data's notes."""
    out = []
    if len(groups) > 1:
        out.append(f"**Not comparable:** these runs differ in model (team composition), task or data source and "
                   f"form {len(groups)} groups. Their accuracies are never drawn on one axis (one panel per group) "
                   "and should not be compared across groups.")
    for name, rs in groups:
        diff = within_group_differences(rs)
        if diff:
            out.append(f"Within {name.split(':')[0]} the runs also differ in "
                       + "; ".join(f"{k} ({', '.join(map(str, v))})" for k, v in diff.items())
                       + ": read accuracy differences there with that in mind.")
        for r in rs:
            if r.get("complete") is False:
                out.append(f"`{r.path.name}` is partial: {r.get('n')} of {r.get('n_expected')} items.")
        for note in sorted({r.get("data_note") for r in rs if r.get("data_note")}):
            out.append(f"{name.split(':')[0]} data: {note}")
    return out
