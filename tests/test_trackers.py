"""--log_with / --log_dir (trackers.py): what TensorBoard and Trackio hold after a run and a 2-cell sweep, read back
from their own stores (TensorBoard's EventAccumulator, Trackio's SQLite database); unknown or missing trackers are
refused in one line before anything loads. Under CI the two packages must be installed (setup.sh installs
requirements-trackers.txt), so these tests cannot pass by being skipped there."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import run
import trackers
from registry import TRACKERS
from tests.conftest import ROOT, results_of

pytestmark = pytest.mark.usefixtures("one_thread")
TINY_RUN = ["--method", "latent_mas", "--device", "cpu", "--task", "gsm8k", "--max_samples", "3", "--max_new_tokens",
            "4", "--latent_steps", "1", "--temperature", "0", "--generate_bs", "2"]


def _need(module: str):
    if os.environ.get("CI"):
        return __import__(module)  # CI installs requirements-trackers.txt: a missing package is a failure there
    return pytest.importorskip(module)


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of the event files under `folder`: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for f in sorted(folder.rglob("events.out.tfevents*")):
        ea = EventAccumulator(str(f))
        ea.Reload()
        for tag in ea.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in ea.Scalars(tag))
    return out


def _hparams(folder: Path) -> dict:
    """The hyperparameters TensorBoard's HParams tab shows for the run under `folder`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    for f in sorted(folder.rglob("events.out.tfevents*")):
        ea = EventAccumulator(str(f))
        ea.Reload()
        try:
            content = ea.PluginTagToContent("hparams")
        except KeyError:  # this file holds no hparams
            continue
        for raw in content.values():
            data = plugin_data_pb2.HParamsPluginData.FromString(raw)
            if data.HasField("session_start_info"):
                return {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
                        for k, v in data.session_start_info.hparams.items()}
    return {}


def test_a_run_logs_settings_items_and_summary_to_tensorboard(tiny_model_dir, tmp_path, capsys):
    _need("tensorboard")
    assert run.main([*TINY_RUN, "--model_name", str(tiny_model_dir), "--log_with", "tensorboard", "--output_dir",
                     str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 3  # stdout: the summary line alone
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    tb = run_dir / "trackers" / run_dir.name
    s = _scalars(tb)
    recs = sorted(results_of(run_dir), key=lambda r: r["index"])
    assert [step for step, _ in s["item/accuracy"]] == [1, 2, 3]
    assert sorted(v for _, v in s["item/generated_tokens"]) == sorted(r["generated_tokens"] for r in recs)
    assert sorted(v for _, v in s["item/kv_bytes_judger"]) == sorted(r["agents"][-1]["kv_bytes_in"] for r in recs)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert s["summary/accuracy"] == [(3, summary["accuracy"])]
    assert s["summary/kv_bytes_judger_mean"] == [(3, pytest.approx(summary["kv_bytes_judger_mean"]))]
    hp = _hparams(tb)  # every setting, as config.json holds them
    assert hp["method"] == "latent_mas" and hp["max_new_tokens"] == 4 and hp["model_name"] == str(tiny_model_dir)


def test_a_sweep_logs_one_run_per_cell_to_tensorboard_and_trackio(tiny_model_dir, tmp_path):
    """In a fresh process (Trackio fixes its folder when first imported), as a user runs it."""
    _need("tensorboard"), _need("trackio")
    f = tmp_path / "knn_sweep.yaml"
    f.write_text(f"method: latent_mas\nmodel_name: {tiny_model_dir}\ndevice: cpu\ntask: gsm8k\nmax_samples: 2\n"
                 f"max_new_tokens: 4\nlatent_steps: 1\ntemperature: 0\nkv_policy: knorm\nkv_keep: [0.5, 0.9]\n"
                 f"log_with: tensorboard,trackio\noutput_dir: {tmp_path / 'sw'}\n")
    env = {k: v for k, v in os.environ.items() if k != "TRACKIO_DIR"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "sweep", str(f)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Trackio" not in proc.stdout  # the trackers' chatter goes to stderr: stdout is the sweep's table
    store = tmp_path / "sw" / "trackers"
    # TensorBoard: one run per cell under the sweep's name
    assert sorted(p.name for p in (store / "knn_sweep").iterdir()) == ["k0.5", "k0.9"]
    for cell in ("k0.5", "k0.9"):
        s = _scalars(store / "knn_sweep" / cell)
        summary = json.loads((tmp_path / "sw" / cell / "summary.json").read_text())
        assert [step for step, _ in s["item/accuracy"]] == [1, 2]
        assert s["summary/kv_bytes_judger_mean"] == [(2, pytest.approx(summary["kv_bytes_judger_mean"]))]
    # Trackio: project = the sweep's name, one run per cell, the group recorded, the same numbers
    db = sqlite3.connect(store / "knn_sweep.db")
    configs = {run_name: json.loads(cfg) for run_name, cfg in db.execute("select run_name, config from configs")}
    assert sorted(configs) == ["k0.5", "k0.9"] and {c["_Group"] for c in configs.values()} == {"knn_sweep"}
    assert {c["kv_keep"] for c in configs.values()} == {0.5, 0.9}
    for cell in configs:
        rows = [(step, json.loads(m)) for step, m in
                db.execute("select step, metrics from metrics where run_name = ? order by id", (cell,))]
        items = [(step, m) for step, m in rows if "item/accuracy" in m]
        assert [step for step, _ in items] == [1, 2]
        recs = sorted(results_of(tmp_path / "sw" / cell), key=lambda r: r["index"])
        assert sorted(m["item/kv_tokens_judger"] for _, m in items) == sorted(r["agents"][-1]["kv_tokens_in"]
                                                                              for r in recs)
        summary = json.loads((tmp_path / "sw" / cell / "summary.json").read_text())
        (last,) = [m for _, m in rows if "summary/accuracy" in m]
        assert last["summary/accuracy"] == summary["accuracy"] and last["summary/n"] == 2


def test_an_unknown_tracker_is_refused_in_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        run.main(["--method", "baseline", "--log_with", "tensorboard,nosuchtracker"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "unknown tracker nosuchtracker" in err[0]
    assert all(name in err[0] for name in TRACKERS)


def test_a_missing_package_is_named_before_anything_loads(tmp_path, monkeypatch, capsys):
    import models

    monkeypatch.setattr(trackers, "_installed", lambda module: module != "trackio")
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model loaded"))
    with pytest.raises(SystemExit) as e:
        run.main(["--method", "baseline", "--max_samples", "1", "--log_with", "tensorboard,trackio", "--output_dir",
                  str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "pip install trackio" in err[0]
    assert not list(tmp_path.iterdir())  # no run directory either


def test_log_dir_without_log_with_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        run.main(["--method", "baseline", "--log_dir", "x"])
    assert e.value.code == 2 and "--log_dir goes with --log_with" in capsys.readouterr().err


def test_every_accelerate_tracker_has_a_row():
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    assert set(TRACKERS) == set(LOGGER_TYPE_TO_CLASS)
