"""Sweeps (sweep.py): a grid file expands to named cells, a dry run lists them and writes nothing, a real sweep runs
each cell as an ordinary run directory on one loaded model, re-running resumes cell by cell, cell shards split the
work, and --fidelity cells share one uncompressed reference per batch."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import run
import sweep
from tests.conftest import results_of, untimed

pytestmark = pytest.mark.usefixtures("one_thread")


def _file(tmp_path: Path, text: str, name: str = "sweep.yaml") -> Path:
    f = tmp_path / name
    f.write_text(text)
    return f


def _tiny_file(tmp_path: Path, tiny_model_dir, body: str) -> Path:
    return _file(tmp_path, f"model_name: {tiny_model_dir}\ndevice: cpu\ntask: gsm8k\nmax_samples: 2\n"
                           f"max_new_tokens: 4\nlatent_steps: 1\ntemperature: 0\noutput_dir: {tmp_path / 'sw'}\n"
                 + body)


GRID = "method: latent_mas\nkv_policy: [knn-top, streaming]\nkv_keep: [0.5, 0.9]\n"


@pytest.fixture
def loads(monkeypatch):
    """Counts models.load_model calls (the sweep must load each model once)."""
    import models

    calls = []
    real = models.load_model
    monkeypatch.setattr(models, "load_model", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    return calls


# --- the file: cells, names, overrides, refusals ---------------------------------------------------------------------

def test_cells_are_the_cross_product_with_stable_names(tmp_path):
    f = _file(tmp_path, "method: latent_mas\nmax_samples: 3\nkv_policy: [knn-top, streaming]\nkv_keep: [0.5, 0.9]\n"
                        "seed: [1, 2]\nmodel_name: some/Model-1B\n")
    s = sweep.plan(str(f), {})
    assert [c.name for c in s.cells] == [f"{p}_k{k}_s{seed}" for p in ("knn-top", "streaming") for k in (0.5, 0.9)
                                         for seed in (1, 2)]
    assert s.folder == Path("runs/sweep_sweep") and all(c.path == s.folder / c.name for c in s.cells)
    assert {c.cfg.compression.kv_keep for c in s.cells} == {0.5, 0.9} and not any(c.refused for c in s.cells)
    # a flag replaces the file's value (the axis collapses) and never renames a cell
    s1 = sweep.plan(str(f), {"kv_keep": 0.9, "max_samples": 5})
    assert [c.name for c in s1.cells] == [c.name for c in s.cells if "_k0.9_" in c.name]
    assert all(c.cfg.data.max_samples == 5 for c in s1.cells)


def test_grid_entries_union_refusals_and_duplicates(tmp_path):
    f = _file(tmp_path, "task: gsm8k\nlatent_steps: 3\ngrid:\n  - method: [baseline, text_mas, latent_mas]\n"
                        "  - method: latent_mas\n    kv_policy: [knn-bottom]\n    kv_keep: [0.5, 0.9]\n"
                        "    include_old_prompts: [false, true]\n")
    s = sweep.plan(str(f), {})
    names = [c.name for c in s.cells]
    assert names[:3] == ["baseline", "text_mas", "latent_mas"]
    assert "latent_mas_knn-bottom_k0.5_stacked" in names and len(names) == 7
    assert sweep.warnings_once(s.cells, s.varied) == []  # a sweep over methods sets latent_steps for all on purpose
    # a cross product the rules refuse in part: those cells are listed with the reason and skipped
    f2 = _file(tmp_path, "method: [baseline, latent_mas]\nkv_policy: knn-top\n", "mixed.yaml")
    s2 = sweep.plan(str(f2), {})
    (bad,) = [c for c in s2.cells if c.refused]
    assert bad.name == "baseline" and "--kv_policy works on the shared cache of --method latent_mas" in bad.refused
    # cells that end up equal run once: --knn_filter --knn_strategy top is --kv_policy knn-top
    f3 = _file(tmp_path, "method: latent_mas\ngrid:\n  - {kv_policy: knn-top}\n  - {knn_filter: true}\n", "dup.yaml")
    assert sweep.plan(str(f3), {}).duplicates == 1


@pytest.mark.parametrize("text, words", [
    ("method: latent_mas\nkv_keep: []\n", "kv_keep: give at least one value"),
    ("method: latent_mas\nkv_kep: [0.5]\n", "unknown setting 'kv_kep' (did you mean kv_keep?)"),
    ("method: latent_mas\nkv_keep: [0.5, 2]\n", "kv_keep: 2.0 is outside (0, 1]"),
    ("method: latent_mas\ngrid: {kv_keep: 0.5}\n", "grid: give a list of mappings"),
    ("method: latent_mas\nrun_dir: x\n", "run_dir: the sweep names each cell's folder"),
    ("method: latent_mas\noutput_dir: [a, b]\n", "a sweep has one folder"),
    ("method: [baseline]\nkv_policy: knn-top\n", "every cell is refused by the rules"),
])
def test_bad_sweep_files_end_in_one_line(text, words, tmp_path, capsys):
    f = _file(tmp_path, text)
    with pytest.raises(SystemExit) as e:
        run.main(["sweep", str(f), "--dry_run"])
    assert e.value.code == 2
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if "error" in ln]
    assert len(err) == 1 and words in err[0], err


def test_dry_run_lists_every_cell_and_writes_nothing(tmp_path, capsys, monkeypatch):
    import data

    monkeypatch.setattr(data, "load_task", lambda *a, **k: pytest.fail("a dry run reads no data"))
    f = _file(tmp_path, f"method: latent_mas\ntask: gsm8k\nmax_samples: -1\nkv_policy: [knn-top, streaming]\n"
                        f"kv_keep: [0.5, 0.9]\nseed: [1, 2]\noutput_dir: {tmp_path / 'sw'}\n")
    assert run.main(["sweep", str(f), "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert "8 cells" in out and "nothing was loaded or written" in out
    for c in sweep.plan(str(f), {}).cells:
        assert str(c.path) in out
    assert out.count("all (1319)") == 8  # -1: the task's size from the registry, no data read
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.yaml"]
    # shards: each lists its own cells
    assert run.main(["sweep", str(f), "--dry_run", "--cell_shard", "1/3"]) == 0
    out = capsys.readouterr().out
    assert "cell shard 1/3" in out and "cell shard 1/3: 3 of 8" in out
    with pytest.raises(SystemExit):
        run.main(["sweep", str(f), "--dry_run", "--cell_shard", "3/3"])
    assert "give I/N with 0 <= I < N" in capsys.readouterr().err


@pytest.mark.parametrize("text", [
    "method: latent_mas\nseed: [1, 2]\nmodel_name: [x/B, x/A, x/B]\nkv_policy: [knn-top, knn-top, streaming]\n"
    "kv_keep: [0.5, 0.9]\ndtype: [float32, bfloat16]\n",  # model axes inside others, values given twice
    "method: [latent_mas, text_mas]\nmodel_name: [x/A, x/B]\ngrid:\n  - {seed: [1, 2]}\n"
    "  - {model_name: x/C, seed: 3}\n  - {model_name: [x/B, x/A], max_samples: [1, 2]}\n",  # other keys, models
    "method: latent_mas\nkv_keep: [0.5, '0.5', 0.50]\nseed: [1, 2]\n",  # one value three ways
    'method: baseline\nsplit: ["..", ".", "/", "a/b", "", "-", "/etc"]\n',  # parts that clash: hashed names
    "method: [baseline, text_mas, latent_mas]\ntask: [gsm8k, arc_easy]\nagents: [teams/sequential.json, "
    "teams/hierarchical.json]\n",  # two keys whose parts hold the separator
])
def test_cells_built_one_by_one_equal_the_whole_grid_sorted_by_model(text, tmp_path):
    """stream() names and orders each cell from its own settings: the same cells, names and order as expanding the
    whole grid, naming it with cell_names and sorting it by model (stable)."""
    import itertools

    from config import FLAGS, RunConfig

    f = _file(tmp_path, text)
    base, entries = sweep.read_sweep(str(f), {})
    cells = sweep.expand(base, entries)
    keys = [k for k in FLAGS if k != "output_dir" and any(k in c for c in cells)
            and len({json.dumps(c[k], default=str) if k in c else "<absent>" for c in cells}) > 1]
    names = sweep.cell_names(cells, keys)
    model = [tuple(RunConfig().updated(c).get(k) for k in sweep.MODEL_KEYS) for c in cells]
    order = list(dict.fromkeys(model))
    expected = [n for _, _, n in sorted(zip(map(order.index, model), itertools.count(), names))]
    s = sweep.plan(str(f), {})
    assert s.varied == keys and [c.name for c in s.cells] == [n for n in expected if n in {c.name for c in s.cells}]
    assert len(s.cells) + s.duplicates == len(cells) and [c.index for c in s.cells] == list(range(len(s.cells)))


def test_a_dry_run_prints_each_cell_as_it_is_checked_and_stops_at_a_bad_one(tmp_path, monkeypatch, capsys):
    """A 10^6-cell grid raised on purpose: the first lines come before any cell but the first is checked, and a cell
    that cannot be planned (here the 2001st: its folder name refused) ends the listing there with exit 2."""
    import io
    import sys

    from config import ConfigError
    from tests.test_hostile_inputs import _axes

    f = _file(tmp_path, f"method: latent_mas\nkv_policy: knorm\n{_axes(10, 6)}output_dir: {tmp_path / 'big'}\n")
    events, real_checked, real_path = [], sweep._checked, sweep.cell_path

    def checked(cell, teams=None):
        events.append("check")
        return real_checked(cell, teams)

    def cell_path(folder, name):
        if events.count("check") == 2000:
            raise ConfigError(f"sweep: the cell name {name!r} is bad")
        return real_path(folder, name)

    class Out(io.StringIO):
        def write(self, text):
            events.extend(["line"] * text.count("\n"))
            return super().write(text)

    monkeypatch.setattr(sweep, "_checked", checked)
    monkeypatch.setattr(sweep, "cell_path", cell_path)
    monkeypatch.setattr(sweep, "expand", lambda *a: pytest.fail("the whole grid was built"))
    monkeypatch.setattr(sys, "stdout", out := Out())
    with pytest.raises(SystemExit) as e:
        run.main(["sweep", str(f), "--dry_run", "--max_cells", "1000000"])
    assert e.value.code == 2
    # the header and the columns before any cell is checked, then each cell's line as soon as it is checked
    assert events[:6] == ["line", "line", "check", "line", "check", "line"]
    lines = out.getvalue().splitlines()
    assert "up to 1000000 cells" in lines[0] and len(lines) == 2 + 2000 and events.count("check") == 2000
    err = capsys.readouterr().err.strip().splitlines()
    assert "error: sweep: the cell name" in err[-1] and "is bad" in err[-1] and "Traceback" not in "".join(err)


# --- running ---------------------------------------------------------------------------------------------------------

def test_a_sweep_loads_the_model_once_and_writes_one_run_per_cell(tiny_model_dir, tmp_path, loads, capsys):
    f = _tiny_file(tmp_path, tiny_model_dir, GRID)
    assert run.main(["sweep", str(f)]) == 0
    out = capsys.readouterr().out
    cells = sorted((tmp_path / "sw").glob("*/summary.json"))
    assert len(cells) == 4 and loads == [str(tiny_model_dir)]
    assert (tmp_path / "sw" / "sweep.md").exists() and out.count("| ran |") == 4 and "accuracy [95% CI]" in out
    # a cell's records are those of the same run made on its own
    assert run.main(["--method", "latent_mas", "--model_name", str(tiny_model_dir), "--device", "cpu", "--task",
                     "gsm8k", "--max_samples", "2", "--max_new_tokens", "4", "--latent_steps", "1", "--temperature",
                     "0", "--kv_policy", "streaming", "--kv_keep", "0.5", "--output_dir", str(tmp_path / "solo")]) == 0
    (solo,) = (tmp_path / "solo").iterdir()
    assert untimed(results_of(solo)) == untimed(results_of(tmp_path / "sw" / "streaming_k0.5"))
    cfg = json.loads((tmp_path / "sw" / "streaming_k0.5" / "config.json").read_text())
    assert cfg["config_file"] == str(f) and cfg["args"]["run_dir"] == str(tmp_path / "sw" / "streaming_k0.5")
    # a report over the sweep folder reads every cell
    assert run.main(["report", str(tmp_path / "sw"), "--out", str(tmp_path / "rep")]) == 0
    assert len(json.loads((tmp_path / "rep" / "report.json").read_text())["runs"]) == 4


def test_rerunning_skips_complete_cells_and_resumes_an_interrupted_one(tiny_model_dir, tmp_path, loads,
                                                                      monkeypatch, capsys):
    import methods

    f = _tiny_file(tmp_path, tiny_model_dir, GRID + "generate_bs: 1\n")
    real, calls = methods.get_method, []

    def stop_at_third_batch(name):
        method = real(name)

        def run_batch(*a):
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return method(*a)
        return run_batch

    monkeypatch.setattr(methods, "get_method", stop_at_third_batch)
    assert run.main(["sweep", str(f)]) == 130  # Ctrl-C in the second cell's first item
    monkeypatch.setattr(methods, "get_method", real)
    first, second = (tmp_path / "sw" / n for n in ("knn-top_k0.5", "knn-top_k0.9"))
    assert json.loads((second / "summary.json").read_text())["complete"] is False and not results_of(second)
    capsys.readouterr()
    assert run.main(["sweep", str(f), "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert "complete" in out and "partial" in out and "new" in out
    before = (first / "results.jsonl").read_text()
    assert run.main(["sweep", str(f)]) == 0
    assert "| complete |" in capsys.readouterr().out
    assert (first / "results.jsonl").read_text() == before  # the complete cell was skipped
    assert len(list((tmp_path / "sw").glob("*/summary.json"))) == 4
    assert all(json.loads(p.read_text())["complete"] for p in (tmp_path / "sw").glob("*/summary.json"))
    # everything complete: nothing loads at all
    loads.clear()
    assert run.main(["sweep", str(f)]) == 0 and loads == []
    # a folder that holds other settings under a cell's name is refused, the other cells skipped
    assert run.main(["sweep", str(f), "--max_new_tokens", "3"]) == 1
    assert "holds another run (max_new_tokens: saved 4, given 3)" in capsys.readouterr().out


def test_cell_shards_split_the_cells(tiny_model_dir, tmp_path, loads):
    f = _tiny_file(tmp_path, tiny_model_dir, GRID)
    assert run.main(["sweep", str(f), "--cell_shard", "1/2"]) == 0
    assert sorted(p.parent.name for p in (tmp_path / "sw").glob("*/summary.json")) == ["knn-top_k0.9",
                                                                                      "streaming_k0.9"]
    assert (tmp_path / "sw" / "sweep-shard1of2.md").exists()
    assert run.main(["sweep", str(f), "--cell_shard", "0/2"]) == 0
    assert len(list((tmp_path / "sw").glob("*/summary.json"))) == 4 and len(loads) == 2


def test_fidelity_cells_share_one_reference_per_batch(tiny_model_dir, tmp_path, monkeypatch):
    from methods import latent_mas

    refs = []
    real = latent_mas.reference
    monkeypatch.setattr(latent_mas, "reference", lambda w, items, *a: refs.append(len(items)) or real(w, items, *a))
    f = _tiny_file(tmp_path, tiny_model_dir, "method: latent_mas\nfidelity: true\ngenerate_bs: 2\n"
                                             "kv_policy: [knn-top, random]\nkv_keep: [0.5, 0.8]\n")
    assert run.main(["sweep", str(f)]) == 0
    assert refs == [2]  # one batch of two items, one reference for the four cells
    refs.clear()
    assert run.main(["--method", "latent_mas", "--model_name", str(tiny_model_dir), "--device", "cpu", "--task",
                     "gsm8k", "--max_samples", "2", "--max_new_tokens", "4", "--latent_steps", "1", "--temperature",
                     "0", "--kv_policy", "random", "--kv_keep", "0.5", "--fidelity", "--generate_bs", "2",
                     "--output_dir", str(tmp_path / "solo")]) == 0
    (solo,) = (tmp_path / "solo").iterdir()
    shared = results_of(tmp_path / "sw" / "random_k0.5")
    assert refs == [2] and "fidelity" in shared[0]
    assert untimed(results_of(solo)) == untimed(shared)


def test_a_sweep_refuses_a_data_parallel_launch(tmp_path, monkeypatch, capsys):
    f = _file(tmp_path, f"method: latent_mas\nkv_keep: [0.5]\nkv_policy: knorm\noutput_dir: {tmp_path / 'sw'}\n")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit):
        run.main(["sweep", str(f)])
    assert "--cell_shard I/N" in capsys.readouterr().err and not (tmp_path / "sw").exists()
