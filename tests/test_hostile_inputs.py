"""Hostile but realistic inputs (issue 19, parts 2-5): experiment files that refuse in one line, grids sized before
they are built, cell folders that stay inside the sweep's folder, resumed settings checked like new ones."""
from __future__ import annotations

import time

import pytest

import strictfiles
from config import ConfigError, read_experiment_file, read_mapping
from strictfiles import DocumentError


def _bomb(levels: int = 8) -> str:
    """A YAML alias bomb: each level repeats the one before nine times (9^(levels+1) strings once expanded)."""
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    prev = "a"
    for n in "bcdefghijk"[:levels]:
        lines.append(f"{n}: &{n} [" + ",".join([f"*{prev}"] * 9) + "]")
        prev = n
    return "\n".join(lines + [f"method: *{prev}"]) + "\n"


def _bomb_in_one_value(levels: int = 8) -> str:
    """The alias bomb inside the one value of a known key (the issue's case: a list-valued key of a sweep file)."""
    parts, prev = ["&a [" + ",".join(["x"] * 9) + "]"], "a"
    for n in "bcdefghijk"[:levels]:
        parts.append(f"&{n} [" + ",".join([f"*{prev}"] * 9) + "]")
        prev = n
    return "method: [[" + ", ".join(parts) + "]]\n"


# --- the loader ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, key", [
    ("method: baseline\nseed: 1\nseed: 2\n", "seed"),
    ("compression:\n  kv_keep: 0.5\n  kv_keep: 0.9\n", "kv_keep"),
    ("{seed: 1, seed: 2}\n", "seed"),
    ("grid:\n  - {kv_keep: 0.5, kv_keep: 0.9}\n", "kv_keep"),
])
def test_yaml_duplicate_keys_are_refused_naming_them(text, key):
    with pytest.raises(DocumentError, match=f"key '{key}' is given twice"):
        strictfiles.parse(text, "yaml")


def test_yaml_merge_keys_may_still_override():
    doc = strictfiles.parse("base: &b {seed: 1, kv_keep: 0.5}\nrun:\n  <<: *b\n  seed: 2\n", "yaml")
    assert doc["run"] == {"seed": 2, "kv_keep": 0.5}


@pytest.mark.parametrize("text, message", [
    ('{"method": "baseline", "seed": 1, "seed": 2}', "key 'seed' is given twice"),
    ('{"grid": [{"kv_keep": 0.5, "kv_keep": 0.9}]}', "key 'kv_keep' is given twice"),
    ('{"temperature": NaN}', "NaN is not a JSON number"),
    ('{"temperature": -Infinity}', "-Infinity is not a JSON number"),
])
def test_json_duplicates_and_non_finite_numbers_are_refused(text, message):
    with pytest.raises(DocumentError, match=message):
        strictfiles.parse(text, "json")


def test_an_alias_bomb_is_refused_before_it_is_built(monkeypatch):
    import yaml

    monkeypatch.setattr(yaml.SafeLoader, "construct_document", lambda *a: pytest.fail("the document was built"))
    with pytest.raises(DocumentError, match="expands to more than"):
        strictfiles.parse(_bomb(), "yaml")


def test_aliases_under_the_bound_still_work():
    doc = strictfiles.parse("a: &a [0.5, 0.9]\nkv_keep: *a\nb: *a\n", "yaml")
    assert doc["kv_keep"] == [0.5, 0.9]
    assert strictfiles.expanded_size(__import__("yaml").compose(_bomb(2)), 10 ** 9) > 9 ** 3


def test_a_recursive_alias_is_refused():
    with pytest.raises(DocumentError, match="contains itself"):
        strictfiles.parse("a: &a [1, *a]\n", "yaml")


def test_a_document_over_the_size_bound_is_refused_unread(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("method: baseline\n" + "# padding\n" * (strictfiles.MAX_BYTES // 10 + 1))
    with pytest.raises(DocumentError, match="larger than 1024 KiB"):
        strictfiles.load(path)


def test_shown_is_bounded_in_length_and_work():
    import yaml

    huge = yaml.safe_load(_bomb(8))["method"]  # 9^9 strings by reference: repr() would run out of memory
    assert len(strictfiles.shown(huge)) <= 80
    assert len(strictfiles.shown("x" * 10 ** 6)) <= 80


# --- wired into experiment files -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, text, words", [
    ("dup.yaml", "method: baseline\nseed: 1\nseed: 2\n", "seed"),
    ("dup.json", '{"method": "baseline", "seed": 1, "seed": 2}', "seed"),
    ("bomb.yaml", _bomb(), "expands to more than"),
    ("bomb1.yaml", _bomb_in_one_value(), "expands to more than"),
    ("nan.json", '{"method": "baseline", "temperature": NaN}', "NaN"),
])
def test_experiment_files_refuse_in_one_line_naming_the_file(name, text, words, tmp_path):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        read_experiment_file(str(path))
    msg = str(e.value)
    assert words in msg and str(path) in msg and "\n" not in msg and len(msg) < 400


@pytest.mark.parametrize("text", [
    "method: [baseline, " + "x" * 5000 + "]\n",  # a list where one value goes: printed bounded
    "x" * 5000 + ": 1\n",  # an unknown key of 5000 characters
    "seed: " + "9" * 3000 + "z\n",  # a value that does not parse
    "prefix_reuse: [" + ", ".join(["1"] * 5000) + "]\n",
])
def test_error_messages_print_bounded_values(text, tmp_path):
    path = tmp_path / "long.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        read_experiment_file(str(path))
    assert len(str(e.value)) < 400 + len(str(path))


def test_a_bomb_below_the_alias_bound_is_still_printed_bounded(tmp_path):
    path = tmp_path / "small_bomb.yaml"
    # 9^4 = 6561 strings under one key: under the alias bound, refused as a list where one value goes
    path.write_text("method: [&a [" + ",".join("x" * 9) + "], &b [" + ",".join(["*a"] * 9) + "], &c ["
                    + ",".join(["*b"] * 9) + "], [" + ",".join(["*c"] * 9) + "]]\n")
    with pytest.raises(ConfigError) as e:
        read_experiment_file(str(path))
    assert "give one value" in str(e.value) and len(str(e.value)) < 400


def test_sweep_files_use_the_strict_loader(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("method: latent_mas\nkv_keep: [0.5]\nkv_keep: [0.9]\n")
    with pytest.raises(ConfigError, match="kv_keep' is given twice"):
        read_mapping(path, "sweep")


@pytest.mark.parametrize("command", [["--config"], ["sweep", "--dry_run"]])
def test_the_alias_bomb_on_the_command_line_ends_in_one_short_line(command, tmp_path):
    import subprocess
    import sys

    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb_in_one_value())
    argv = [command[0], str(path), *command[1:]]
    p = subprocess.run([sys.executable, "run.py", *argv], capture_output=True, text=True,  # before: minutes, then
                       cwd=strictfiles.Path(strictfiles.__file__).parent, timeout=120)  # MemoryError
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and len(p.stdout + p.stderr) < 2000 and p.stderr.count("\n") == 1


# --- sweep grids: sized before they are built, cell folders inside output_dir ----------------------------------------

def _cli(argv, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of run.main(argv), whether it returns its code or exits with it."""
    import run

    try:
        code = run.main(argv)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _axes(n: int, k: int) -> str:
    """k axes of n values each (n^k cells), on keys a sweep may vary."""
    keys = ["seed", "max_new_tokens", "latent_steps", "generate_bs", "top_p", "kv_keep"][:k]
    values = {"top_p": [round(0.1 * (i + 1), 2) for i in range(n)], "kv_keep": [round(0.1 * (i + 1), 2)
                                                                                for i in range(n)]}
    return "".join(f"{key}: {values.get(key, list(range(1, n + 1)))}\n" for key in keys)


def test_grid_size_is_the_product_of_the_axes_per_sub_grid():
    import sweep

    assert sweep.grid_size({"seed": (1, 2, 3), "kv_keep": (0.5, 0.9), "method": "latent_mas"}, []) == 6
    assert sweep.grid_size({"seed": (1, 2)}, [{"kv_keep": (0.5, 0.9, 1.0)}, {"method": "baseline"}]) == 6 + 2
    assert sweep.grid_size({"seed": (1, 2)}, [{"seed": (1,)}]) == 1  # a sub-grid's value replaces the top level's


def test_a_million_cell_grid_is_refused_before_any_cell_is_built(tmp_path, monkeypatch, capsys):
    import sweep

    monkeypatch.setattr(sweep, "expand", lambda *a: pytest.fail("cells were built"))
    f = tmp_path / "big.yaml"
    f.write_text(f"method: latent_mas\nkv_policy: knorm\n{_axes(10, 6)}output_dir: {tmp_path / 'big'}\n")
    code, out, err = _cli(["sweep", str(f), "--dry_run"], capsys)
    assert code == 2
    assert "1000000 cells" in err and "--max_cells 1000000" in err and "Traceback" not in err
    assert err.count("\n") == 1 and not (tmp_path / "big").exists()


def test_the_cell_limit_is_raised_on_purpose(tmp_path, capsys):
    f = tmp_path / "s.yaml"
    f.write_text(f"method: latent_mas\nkv_policy: knorm\n{_axes(3, 3)}output_dir: {tmp_path / 'sw'}\n")
    code, _, err = _cli(["sweep", str(f), "--dry_run", "--max_cells", "26"], capsys)
    assert code == 2 and "27 cells" in err and "--max_cells 27" in err
    code, out, _ = _cli(["sweep", str(f), "--dry_run", "--max_cells", "27"], capsys)
    assert code == 0 and "27 cells" in out


HOSTILE_SPLITS = ["..", ".", "/", "a/b", "", "../..", "-", "/etc"]


def test_cell_folders_are_safe_names_inside_output_dir(tmp_path):
    import sweep

    f = tmp_path / "esc.yaml"
    f.write_text(f"method: baseline\nsplit: {json_list(HOSTILE_SPLITS)}\noutput_dir: {tmp_path / 'out'}\n")
    s = sweep.plan(str(f), {})
    assert len({c.path for c in s.cells}) == len(HOSTILE_SPLITS)
    for c in s.cells:
        assert c.path.parent == tmp_path / "out" and c.path.name not in ("", ".", "..")
        assert c.path.resolve().parent == (tmp_path / "out").resolve() and not c.path.name.startswith("-")


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "../x"])
def test_cell_path_refuses_a_name_that_leaves_the_folder(name, tmp_path):
    import sweep

    with pytest.raises(ConfigError, match="would not be a folder inside"):
        sweep.cell_path(tmp_path, name)


def json_list(values) -> str:
    import json

    return json.dumps(values)


def test_a_sweep_over_path_like_values_writes_nothing_beside_output_dir(tiny_model_dir, tmp_path, capsys):
    parent = tmp_path / "parent"
    parent.mkdir()
    f = tmp_path / "esc.yaml"
    f.write_text(f"method: baseline\nmodel_name: {tiny_model_dir}\ndevice: cpu\ntask: gsm8k\nmax_samples: 1\n"
                 f"max_new_tokens: 2\ntemperature: 0\nsplit: ['..', '.']\noutput_dir: {parent / 'out'}\n")
    _, _, err = _cli(["sweep", str(f)], capsys)
    assert "Traceback" not in err
    assert [p.name for p in parent.iterdir()] in ([], ["out"])
    assert not list((parent / "out").glob("*.json*"))  # nothing in the sweep's own folder but cells and sweep.md


LONG = "a" * 300  # longer than a file name may be (255 bytes on Linux file systems)


@pytest.mark.parametrize("argv", [
    ["--method", "baseline", "--max_samples", "1", "--output_dir", "{t}/" + LONG],
    ["--method", "baseline", "--max_samples", "1", "--run_dir", "{t}/" + LONG],
    ["--method", "baseline", "--max_samples", "1", "--run_dir", "{t}/" + LONG + "/x"],
    ["sweep", "{t}/s.yaml"],
])
def test_a_name_too_long_ends_in_one_line(argv, tmp_path, capsys):
    (tmp_path / "s.yaml").write_text(f"method: baseline\nmax_samples: 1\nseed: [1, 2]\noutput_dir: {tmp_path / LONG}\n")
    code, _, err = _cli([a.replace("{t}", str(tmp_path)) for a in argv], capsys)
    assert code == 2 and "Traceback" not in err and "File name too long" in err.strip().splitlines()[-1]


def test_a_dry_run_lists_a_folder_it_cannot_use_instead_of_failing(tmp_path, capsys):
    f = tmp_path / "s.yaml"
    f.write_text(f"method: baseline\nmax_samples: 1\nseed: [1, 2]\noutput_dir: {tmp_path / LONG}\n")
    code, out, err = _cli(["sweep", str(f), "--dry_run"], capsys)
    assert code == 0 and "Traceback" not in err and out.count("unusable (File name too long)") == 2


# --- SIGTERM like Ctrl-C; a second Ctrl-C and one during loading end quietly ----------------------------------------

ROOT = strictfiles.Path(strictfiles.__file__).parent


def _start(tmp_path, argv, patch: str = ""):
    """run.py ARGV in a child process (its own session, so a signal reaches only it), after `patch` (Python that
    slows a step down, so a signal lands there). Returns the Popen; stderr goes to tmp_path/err.log."""
    import os
    import subprocess
    import sys

    code = f"import sys, time\n{patch}\nimport run\nsys.exit(run.main({argv!r}))\n"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=open(tmp_path / "err.log", "w"), text=True, start_new_session=True)


def _wait_for(cond, timeout_s: float = 120):
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)


SLOW_ITEMS = ("import methods\n_get = methods.get_method\n"  # each batch takes at least half a second
              "def _slow_method(name):\n    f = _get(name)\n"
              "    return lambda *a, **k: (time.sleep(0.5), f(*a, **k))[1]\n"
              "methods.get_method = _slow_method\n")


def _run_argv(tiny_model_dir, run_dir, n: int = 40):
    return ["--method", "baseline", "--model_name", str(tiny_model_dir), "--device", "cpu", "--task", "gsm8k",
            "--max_samples", str(n), "--max_new_tokens", "2", "--temperature", "0", "--run_dir", str(run_dir)]


def test_sigterm_stops_a_run_like_ctrl_c(tiny_model_dir, tmp_path):
    import json
    import signal

    d = tmp_path / "run"
    p = _start(tmp_path, _run_argv(tiny_model_dir, d), SLOW_ITEMS)
    _wait_for(lambda: (d / "results.jsonl").exists() and (d / "results.jsonl").read_text().count("\n") >= 1)
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=60)
    err = (tmp_path / "err.log").read_text()
    assert p.returncode == 143, err[-500:]
    assert "Traceback" not in err and f"--resume {d}" in err
    summary = json.loads((d / "summary.json").read_text())
    assert summary["complete"] is False and 1 <= summary["n"] < 40
    from rundir import lock_run_dir

    lock_run_dir(d).close()  # the lock was released (the process is gone; and nothing else holds it)


def test_sigterm_stops_a_sweep_and_writes_its_table(tiny_model_dir, tmp_path):
    import signal

    f = tmp_path / "s.yaml"
    f.write_text(f"method: baseline\nmodel_name: {tiny_model_dir}\ndevice: cpu\nmax_samples: 40\nmax_new_tokens: 2\n"
                 f"temperature: 0\nseed: [1, 2]\noutput_dir: {tmp_path / 'sw'}\n")
    p = _start(tmp_path, ["sweep", str(f)], SLOW_ITEMS)
    first = tmp_path / "sw" / "s1" / "results.jsonl"
    _wait_for(lambda: first.exists() and first.read_text().count("\n") >= 1)
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=60)
    err = (tmp_path / "err.log").read_text()
    assert p.returncode == 143 and "Traceback" not in err, err[-500:]
    assert (tmp_path / "sw" / "s1" / "summary.json").exists()
    table = (tmp_path / "sw" / "sweep.md").read_text()
    assert "interrupted" in table and "not started" in table and "run the same command again" in err


def test_a_second_ctrl_c_while_the_first_is_handled_ends_quietly(tiny_model_dir, tmp_path):
    import signal

    d = tmp_path / "run"
    slow_finish = SLOW_ITEMS + ("import rundir\n_w = rundir.RunDir.write_summary\n"
                                "def _slow_summary(self, s):\n    open(self.path / 'finishing', 'w').close()\n"
                                "    time.sleep(30)\n    _w(self, s)\n"
                                "rundir.RunDir.write_summary = _slow_summary\n")
    p = _start(tmp_path, _run_argv(tiny_model_dir, d), slow_finish)
    _wait_for(lambda: (d / "results.jsonl").exists() and (d / "results.jsonl").read_text().count("\n") >= 1)
    p.send_signal(signal.SIGINT)
    _wait_for(lambda: (d / "finishing").exists())
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=60)
    err = (tmp_path / "err.log").read_text()
    assert p.returncode == 130 and "Traceback" not in err and "interrupted" in err.strip().splitlines()[-1]


def test_ctrl_c_while_the_model_loads_ends_quietly(tiny_model_dir, tmp_path):
    import signal

    d = tmp_path / "run"
    slow_load = ("import runner\n_l = runner.load_wrapper\n"
                 "def _slow(*a, **k):\n"
                 f"    open({str(tmp_path / 'loading')!r}, 'w').close()\n    time.sleep(30)\n    return _l(*a, **k)\n"
                 "runner.load_wrapper = _slow\n")
    p = _start(tmp_path, _run_argv(tiny_model_dir, d), slow_load)
    _wait_for(lambda: (tmp_path / "loading").exists())
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=60)
    err = (tmp_path / "err.log").read_text()
    assert p.returncode == 130 and "Traceback" not in err and "interrupted" in err.strip().splitlines()[-1]
    assert not d.exists()  # nothing was written: the folder the run made is gone again


# --- --resume checks the saved settings with the rules of a new run, before the model loads --------------------------

@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory):
    import run

    out = tmp_path_factory.mktemp("finished")
    assert run.main(["--method", "baseline", "--model_name", str(tiny_model_dir), "--device", "cpu", "--task",
                     "gsm8k", "--max_samples", "2", "--max_new_tokens", "2", "--temperature", "0",
                     "--output_dir", str(out)]) == 0
    (rd,) = out.iterdir()
    return rd


@pytest.mark.parametrize("key, value, words", [
    ("method", "bogus", "'bogus' is not one of"),
    ("kv_keep", 7, "outside (0, 1]"),
    ("seed", "abc", "seed"),
    ("max_new_tokens", None, "needs a value"),
    ("kv_policy", "knorm", "works on the shared cache of --method latent_mas"),  # a combination a new run refuses
    ("prompt", ["sequential"] * 10 ** 5, "give one value, not list"),
])
def test_resume_refuses_edited_settings_before_the_model_loads(key, value, words, finished_run, tmp_path,
                                                               monkeypatch, capsys):
    import json
    import shutil

    import models

    d = tmp_path / "edited"
    shutil.copytree(finished_run, d, ignore=shutil.ignore_patterns("run.lock"))
    config = json.loads((d / "config.json").read_text())
    config["args"][key] = value
    (d / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model loaded"))
    code, _, err = _cli(["--resume", str(d)], capsys)
    assert code == 2 and "Traceback" not in err and len(err) < 600
    assert words in err and f"{d / 'config.json'}" in err and err.count("\n") == 1


def test_resume_still_takes_an_untouched_saved_run(finished_run, tmp_path, capsys):
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(finished_run, d, ignore=shutil.ignore_patterns("run.lock"))
    code, _, err = _cli(["--resume", str(d)], capsys)
    assert code == 0, err


# --- run files are read as strict JSON ------------------------------------------------------------------------------

@pytest.mark.parametrize("file, edit", [
    ("summary.json", lambda t: t.replace('"accuracy": ', '"accuracy": NaN, "x": ', 1)),
    ("summary.json", lambda t: t.replace('"n": ', '"n": Infinity, "y": ', 1)),
    ("config.json", lambda t: t.replace('"args": {', '"args": {"seed": 1, "seed": 2, ', 1)),
    ("results.jsonl", lambda t: t.replace('"correct": ', '"time_s": NaN, "correct": ', 1)),
])
def test_run_files_with_nan_or_duplicate_keys_are_refused_naming_the_file(file, edit, finished_run, tmp_path,
                                                                          capsys):
    import shutil

    from rundir import RunDirError, read_run

    d = tmp_path / "edited"
    shutil.copytree(finished_run, d, ignore=shutil.ignore_patterns("run.lock"))
    (d / file).write_text(edit((d / file).read_text()))
    with pytest.raises(RunDirError, match=file):
        read_run(d)
    code, _, err = _cli(["report", str(d), "--out", str(tmp_path / "rep")], capsys)
    assert code == 2 and "Traceback" not in err and file in err and err.count("\n") == 1


@pytest.mark.parametrize("file, key, value", [
    ("summary.json", "accuracy", "high"),
    ("summary.json", "n", True),
    ("summary.json", "n", 2.5),
    ("summary.json", "accuracy_ci95", [0.1]),
    ("summary.json", "compression", {"kv_policy": "snapkv", "kv_keep": "half"}),
    ("summary.json", "model", ["a", "b"]),
    ("results.jsonl", "correct", "yes"),
    ("results.jsonl", "time_s", "slow"),
])
def test_wrong_typed_fields_are_refused_in_one_line(file, key, value, finished_run, tmp_path, capsys):
    import json
    import shutil

    d = tmp_path / "edited"
    shutil.copytree(finished_run, d, ignore=shutil.ignore_patterns("run.lock"))
    if file == "summary.json":
        s = json.loads((d / file).read_text())
        s[key] = value
        (d / file).write_text(json.dumps(s))
    else:
        lines = (d / file).read_text().splitlines()
        rec = json.loads(lines[0])
        rec[key] = value
        (d / file).write_text("\n".join([json.dumps(rec), *lines[1:]]) + "\n")
        (d / "summary.json").unlink()  # the report rebuilds the summary from the records
    code, _, err = _cli(["report", str(d), "--out", str(tmp_path / "rep")], capsys)
    assert code == 2 and "Traceback" not in err and file in err and key in err and err.count("\n") == 1


# --- report: runs whose folders share a name, a run given twice, --out naming a file ---------------------------------

def test_runs_whose_folders_share_a_name_get_unique_labels(finished_run, tmp_path, capsys):
    import json
    import shutil

    for parent in ("sweep_a", "sweep_b"):
        shutil.copytree(finished_run, tmp_path / parent / "cell", ignore=shutil.ignore_patterns("run.lock"))
    code, _, err = _cli(["report", str(tmp_path / "sweep_a" / "cell"), str(tmp_path / "sweep_b" / "cell"),
                         "--out", str(tmp_path / "rep")], capsys)
    assert code == 0, err
    labels = [r["label"] for r in json.loads((tmp_path / "rep" / "report.json").read_text())["runs"]]
    assert len(labels) == 2 and len(set(labels)) == 2 and "sweep_a/cell" in labels[0] + labels[1]


@pytest.mark.parametrize("twice", ["same path", "path and its folder", "path and a spelling of it"])
def test_a_run_given_twice_is_counted_once(twice, finished_run, tmp_path, capsys):
    import json
    import shutil

    folder = tmp_path / "runs"
    run_dir = folder / "one"
    shutil.copytree(finished_run, run_dir, ignore=shutil.ignore_patterns("run.lock"))
    other = {"same path": run_dir, "path and its folder": folder,
             "path and a spelling of it": folder / ".." / "runs" / "one"}[twice]
    code, _, err = _cli(["report", str(run_dir), str(other), "--out", str(tmp_path / "rep")], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert len(result["runs"]) == 1 and result["paired"] == []  # never paired with itself


def test_out_naming_a_file_is_refused_in_one_line(finished_run, tmp_path, capsys):
    (tmp_path / "afile").write_text("keep me")
    code, _, err = _cli(["report", str(finished_run), "--out", str(tmp_path / "afile")], capsys)
    assert code == 2 and "Traceback" not in err and "is a file" in err and err.count("\n") == 1
    assert (tmp_path / "afile").read_text() == "keep me"
    code, _, err = _cli(["report", str(finished_run), "--out", str(tmp_path / "afile" / "sub")], capsys)
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1


def test_a_signal_the_process_was_started_ignoring_stays_ignored():
    import signal

    import interrupts

    before = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        previous = interrupts.install()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN and signal.SIGTERM not in previous
        assert signal.getsignal(signal.SIGINT) is interrupts._stop
        interrupts.restore(previous)
        assert signal.getsignal(signal.SIGINT) is not interrupts._stop
    finally:
        signal.signal(signal.SIGTERM, before)
