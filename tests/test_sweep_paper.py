"""The papers as experiment files (config/paper/): their sweeps list the published cells without loading anything,
every published number (config/paper/published.yaml) belongs to exactly one of their cells, the report shows it
beside a matching run, and a CPU version of each file (the embedded model, one or two items) runs end to end."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import run
import sweep
from report.runs import Run
from report.tables import PUBLISHED, load_published, published_for
from rundir import SavedRun
from tests.conftest import ROOT
from tests.test_report import make_run

PAPER = ROOT / "config" / "paper"
FILES = {"latentmas_main.yaml": 72, "knn_latentmas.yaml": 63}
# the CPU version of each file: the command its header gives (embedded model, offline, few items and tokens)
CPU = {"latentmas_main.yaml": ["--model_name", "smollm2-135m", "--task", "gsm8k", "--max_samples", "2",
                               "--max_new_tokens", "8", "--temperature", "0", "--generate_bs", "2"],
       "knn_latentmas.yaml": ["--model_name", "smollm2-135m", "--max_samples", "1", "--max_new_tokens", "4",
                              "--temperature", "0", "--kv_policy", "knn-bottom", "--kv_keep", "0.6",
                              "--include_old_prompts"]}


def _as_run(cell: sweep.Cell) -> Run:
    """A cell as the report would see its run (settings only)."""
    return Run(SavedRun(Path(cell.name), {"args": cell.cfg.flat()}, cell.cfg, [], cell.cfg.summary_settings()))


@pytest.mark.parametrize("name", FILES)
def test_paper_files_pass_a_dry_run(name, capsys, monkeypatch):
    import data

    monkeypatch.setattr(data, "load_task", lambda *a, **k: pytest.fail("a dry run reads no data"))
    assert run.main(["sweep", str(PAPER / name), "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert f"{FILES[name]} cells (0 refused" in out and "nothing was loaded or written" in out
    s = sweep.plan(str(PAPER / name), {})
    assert len(s.cells) == FILES[name] and not any(c.refused for c in s.cells)
    for c in s.cells:  # the papers' decoding
        d = c.cfg.decoding
        assert (d.temperature, d.top_p, d.max_new_tokens, d.seed) == (0.6, 0.95, 4096, 42), c.name
    header = " ".join((PAPER / name).read_text().replace("#", " ").replace("\\", " ").split())
    assert " ".join(CPU[name]) in header  # the CPU version the tests run is the one the file documents


def test_every_published_number_belongs_to_one_cell_of_the_paper_files():
    rows = load_published(PUBLISHED)
    assert len(rows) == 72 + 3 + 20 and all(0 < r["accuracy"] < 1 for r in rows)
    cells = [c for name in FILES for c in sweep.plan(str(PAPER / name), {}).cells]
    matched = {id(r): [] for r in rows}
    for c in cells:
        for r in published_for(_as_run(c), rows):
            matched[id(r)].append(c.name)
    assert all(len(names) == 1 for names in matched.values()), [n for n in matched.values() if len(n) != 1]
    main = sweep.plan(str(PAPER / "latentmas_main.yaml"), {}).cells
    assert all(len(published_for(_as_run(c), rows)) == 1 for c in main)
    knn = sweep.plan(str(PAPER / "knn_latentmas.yaml"), {}).cells
    with_number = [c for c in knn if published_for(_as_run(c), rows)]
    assert len(with_number) == 23 and all(c.cfg.compression.kv_positions == "shift" for c in with_number
                                          if c.cfg.compression.kv_policy != "none")


def test_the_report_shows_the_published_number_beside_a_matching_run(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "base", method="baseline", model="Qwen/Qwen3-8B", correct=8)
    make_run(runs, "lat", method="latent_mas", model="/models/qwen3-8b", steps=40, correct=9)
    make_run(runs, "knn", method="latent_mas", model="Qwen/Qwen3-8B", policy="knn-top", keep=0.5, correct=5)
    out = tmp_path / "rep"
    assert run.main(["report", str(runs), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "| accuracy [95% CI] | paper |" in md
    assert "| 0.800 [0.49, 0.94] | 0.811 (LatentMAS T1) |" in md  # Qwen3-8B GSM8K single agent
    assert "| 0.900 [0.60, 0.98] | 0.938 (LatentMAS T1) |" in md  # a local copy of the model matches too
    assert "LatentMAS T1 = LatentMAS (Zou et al. 2025" in md
    rows = {r["run"]: r["published"] for r in json.loads((out / "report.json").read_text())["runs"]}
    assert rows["knn"] == [] and rows["base"][0]["accuracy"] == pytest.approx(0.811)
    # no matching run, or --published none: no column
    assert run.main(["report", str(runs), "--out", str(tmp_path / "r2"), "--published", "none"]) == 0
    assert "| paper |" not in (tmp_path / "r2" / "report.md").read_text()


@pytest.mark.parametrize("name, cells", [("latentmas_main.yaml", 3), ("knn_latentmas.yaml", 5)])
def test_cpu_version_of_each_paper_file_runs_end_to_end(name, cells, tmp_path, capsys, one_thread):
    """About 20-25 s each on 2 CPU cores: the file's own CPU command (its header) on the embedded model."""
    out = tmp_path / "sw"
    assert run.main(["sweep", str(PAPER / name), *CPU[name], "--output_dir", str(out)]) == 0
    summaries = [json.loads(p.read_text()) for p in out.glob("*/summary.json")]
    assert len(summaries) == cells and all(s["complete"] and s["model"] == "smollm2-135m" for s in summaries)
    assert capsys.readouterr().out.count("| ran |") == cells
    assert run.main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    assert "McNemar" in (tmp_path / "rep" / "report.md").read_text()
