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


def test_an_alias_bomb_is_refused_in_linear_time():
    start = time.perf_counter()
    with pytest.raises(DocumentError, match="expands to more than"):
        strictfiles.parse(_bomb(), "yaml")
    assert time.perf_counter() - start < 2


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

    huge = yaml.safe_load(_bomb(8))["method"]  # 9^9 strings by reference: walking it all would take minutes
    start = time.perf_counter()
    text = strictfiles.shown(huge)
    assert len(text) <= 80 and time.perf_counter() - start < 0.1
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
    start = time.perf_counter()
    argv = [command[0], str(path), *command[1:]]
    p = subprocess.run([sys.executable, "run.py", *argv], capture_output=True, text=True,
                       cwd=strictfiles.Path(strictfiles.__file__).parent, timeout=60)
    assert p.returncode == 2 and time.perf_counter() - start < 15
    assert "Traceback" not in p.stderr and len(p.stdout + p.stderr) < 2000 and p.stderr.count("\n") == 1
