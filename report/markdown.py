"""report.md, assembled from one small function per section."""
from __future__ import annotations

from datetime import datetime

import stats
from report.plots import CAPTIONS
from report.runs import Run


def _fmt(x, digits=2, scale=1.0) -> str:
    return "" if x is None else f"{x / scale:.{digits}f}"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]


def _pct(x) -> str:
    return "" if x is None else f"{x:.3f}"


def _mib(x) -> str:
    return _fmt(x, 2, 2 ** 20)


def _published_text(published: list[dict], shorts: dict) -> str:
    return "; ".join(f"{p['accuracy']:.3f} ({shorts[p['source']]}" + (f", n={p['n']}" if p["n"] else "") + ")"
                     for p in published)


def header(n_runs: int, command: str | None) -> list[str]:
    return ["# LatentMAS-KV report", "", f"{n_runs} run(s), made {datetime.now().strftime('%Y-%m-%d %H:%M')}"
            + (f" with `{command}`" if command else "") + "."]


def groups_section(groups: list[tuple[str, list[Run]]], notes: list[str]) -> list[str]:
    md = ["", "## Groups (same model, task and data source)", ""]
    md += [f"- {name} ({len(rs)} run(s))" for name, rs in groups]
    return md + ([""] + [f"- {n}" for n in notes] if notes else [])


def runs_section(rows: list[dict], papers: list[dict]) -> list[str]:
    """The Runs table; a "paper" column only when some run matches a published number."""
    paper = any(row["published"] for row in rows)
    shorts = {p["source"]: p["short"] for p in papers}
    header_ = ["group", "run", "n", "accuracy [95% CI]", *(["paper"] if paper else []), "judger KV tokens",
               "judger KV MiB", "kept share", "time/item s", "gen. tokens/item", "compress s/item", "agreement", "KL"]
    md = ["", "## Runs", ""] + _md_table(header_, [[
        row["group"].split(":")[0], row["label"], f"{row['n']}" + (" (partial)" if row["complete"] is False else ""),
        f"{_fmt(row['accuracy'], 3)} [{_fmt(row['accuracy_ci95'][0], 2)}, {_fmt(row['accuracy_ci95'][1], 2)}]",
        *([_published_text(row["published"], shorts)] if paper else []),
        _fmt(row["kv_tokens_judger_mean"], 1), _fmt(row["kv_bytes_judger_mean"], 2, 2 ** 20),
        _fmt(row["kv_kept_share_judger_mean"], 3), _fmt(row["time_per_sample_s"], 2),
        _fmt(row["generated_tokens_mean"], 1), _fmt(row["compress_time_mean_s"], 4),
        _fmt(row["fidelity_agreement_mean"], 3), _fmt(row["fidelity_kl_mean"], 4)] for row in rows])
    if paper:
        used = {p["source"] for row in rows for p in row["published"]}
        md += ["", "paper: the published accuracy of the same setting (model, task, method, topology, latent steps and "
               "compression as listed in the published-numbers file; decoding and items are not matched, so compare "
               "n). " + "; ".join(f"{short} = {source}" for source, short in shorts.items() if source in used) + "."]
    return md + ["", "Run directories: " + ", ".join(f"`{row['label']}` = `{row['path']}`" for row in rows)]


def seeds_markdown(seeds: list[dict]) -> list[str]:
    if not seeds:
        return []
    md = ["", "## Seeds (runs of one setting that differ only in seed)", "",
          "Mean of the runs' accuracies; sd: their sample standard deviation; CI: the 95% Student-t interval over the "
          "seeds, mean +- t(0.975, k-1) sd / sqrt(k) for k runs. It measures seed-to-seed variation only (runs whose "
          "seeds agree, as greedy decoding does, give sd 0); item-level uncertainty is each run's Wilson interval.", ""]
    return md + _md_table(
        ["group", "setting", "seeds", "items/run", "mean accuracy", "sd", "min-max", "95% t-interval over seeds"],
        [[c["group"].split(":")[0], c["setting"], ", ".join(map(str, c["seeds"])),
          ", ".join(sorted({str(n) for n in c["n"]})), _pct(c["accuracy_mean"]), _pct(c["accuracy_sd"]),
          f"{_pct(c['accuracy_min'])}-{_pct(c['accuracy_max'])}",
          f"[{_pct(c['accuracy_t_ci95'][0])}, {_pct(c['accuracy_t_ci95'][1])}]"] for c in seeds])


def paired_markdown(pairs: list[dict], not_paired: list[str], baseline: Run | None) -> list[str]:
    md = ["", "## Paired comparisons (same items)", ""]
    rule = (f"Every run is paired with the baseline `{baseline.label}` ({baseline.path.name})." if baseline else
            "Each compressed run is paired with the uncompressed run of its method and seed (same topology and latent "
            "steps where there is one); every other run with its group's first run (`--baseline RUN_DIR` picks one "
            "reference for all).")
    md += [rule + " Only runs over the same items (task, data source, split and item indices) are paired. Δ: "
           "run accuracy minus reference accuracy over those items, with a 95% paired bootstrap interval "
           f"(percentile, {stats.BOOTSTRAP_RESAMPLES} resamples of the items, seed {stats.BOOTSTRAP_SEED}); "
           "wins / losses / ties: items only the run got right / only the reference got right / both alike; p: exact "
           "McNemar test (two-sided binomial test, p = 1/2, on the wins and losses). Agreement, KL and KV are the "
           "run's fidelity to the uncompressed judger and its judger cache against the reference's.", ""]
    if pairs:
        md += _md_table(
            ["group", "run", "reference", "items", "accuracy run / ref", "Δ accuracy [95% paired bootstrap CI]",
             "wins / losses / ties", "McNemar exact p", "agreement", "KL", "judger KV MiB run / ref"],
            [[p["group"].split(":")[0], p["label"], p["reference_label"], str(p["n"]),
              f"{p['accuracy']:.3f} / {p['accuracy_reference']:.3f}",
              f"{p['diff']:+.3f} [{p['diff_ci95_bootstrap'][0]:+.3f}, {p['diff_ci95_bootstrap'][1]:+.3f}]",
              f"{p['wins']} / {p['losses']} / {p['ties']}", f"{p['p_mcnemar_exact']:.3g}",
              _fmt(p["fidelity_agreement_mean"], 3), _fmt(p["fidelity_kl_mean"], 4),
              f"{_mib(p['kv_bytes_judger_mean'])} / {_mib(p['kv_bytes_judger_mean_reference'])}"] for p in pairs])
    elif not not_paired:
        md += ["- nothing to pair: one run per group"]
    if not_paired:
        md += [""] + [f"- Not paired: {line}" for line in not_paired]
    return md


def per_method_section(per_method: list[dict]) -> list[str]:
    return ["", "## Per method", ""] + _md_table(
        ["group", "method", "runs", "items", "time/item s", "generated tokens/item"],
        [[m["group"].split(":")[0], m["method"], str(m["runs"]), str(m["items"]), _fmt(m["time_per_item_s"], 2),
          _fmt(m["generated_tokens_per_item"], 1)] for m in per_method])


def plots_section(plots: dict) -> list[str]:
    md = ["", "## Plots", ""]
    for name, path in plots.items():
        md += [f"![{CAPTIONS[name]}]({path.name})", ""] if path else [f"- {CAPTIONS[name]}: no runs for this plot", ""]
    return md
