"""Reading YAML and JSON files that a user hands in (experiment and sweep files), strictly and within bounds.

Plain `yaml.safe_load` and `json.loads` accept what a careful reader would not: a key written twice silently takes
the last value (a sweep loses cells), YAML aliases can expand a few hundred bytes into billions of values (an
"alias bomb"; building it is cheap because aliases share objects, but anything that walks or prints it is not), and
JSON's NaN / Infinity are not JSON. Here:

- a duplicate key is refused, naming the key and its line;
- a document larger than MAX_BYTES is refused before it is parsed;
- the value a document expands to (every alias counted as often as it is used) may hold at most MAX_NODES values,
  checked on the composed YAML graph before anything is constructed; an alias that contains itself is refused;
- JSON's NaN and Infinity are refused.

`shown(value)` is the bounded repr to put in error messages: it never walks more than a few elements of a value,
however large. Errors are DocumentError (a ValueError) with a one-line message that names no file: the caller adds
which file it was reading (config.read_mapping).
"""
from __future__ import annotations

import json
import reprlib
from pathlib import Path

MAX_BYTES = 1 << 20  # 1 MiB: an experiment file is a screen or two of settings
MAX_NODES = 100_000  # values after alias expansion: a 10^5-element list is far beyond any real experiment file

_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxdict, _repr.maxlist, _repr.maxtuple = 2, 4, 6, 6
_repr.maxstring, _repr.maxother, _repr.maxlong = 60, 60, 40


class DocumentError(ValueError):
    """A file that is not a plain, bounded YAML or JSON document; str(error) is one line."""


def shown(value, limit: int = 80) -> str:
    """repr(value) for an error message: bounded in length and in the work it takes, whatever the value holds."""
    return clip(_repr.repr(value), limit)


def clip(text: str, limit: int = 200) -> str:
    """One line of at most `limit` characters (whitespace runs, newlines included, become one space)."""
    text = " ".join(str(text)[:limit * 4].split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def read_text(path: Path, max_bytes: int = MAX_BYTES) -> str:
    """The file's UTF-8 text, refused above max_bytes without reading further. OSError and UnicodeDecodeError pass
    to the caller (which says which file)."""
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise DocumentError(f"larger than {max_bytes // 1024} KiB; an experiment file holds settings, not data")
    return data.decode("utf-8")


def parse(text: str, fmt: str, max_nodes: int = MAX_NODES):
    """The document in `text` ("json" or "yaml"), strictly: see the module docstring."""
    return _parse_json(text) if fmt == "json" else _parse_yaml(text, max_nodes)


def load(path: Path, max_bytes: int = MAX_BYTES, max_nodes: int = MAX_NODES):
    """read_text + parse, the format from the file's suffix (.json is JSON, anything else YAML)."""
    path = Path(path)
    return parse(read_text(path, max_bytes), "json" if path.suffix.lower() == ".json" else "yaml", max_nodes)


# --- JSON ------------------------------------------------------------------------------------------------------------

def _json_object(pairs: list[tuple]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise DocumentError(f"key {shown(key)} is given twice; keep one")
        out[key] = value
    return out


def _json_constant(name: str):
    raise DocumentError(f"{name} is not a JSON number; give a finite number")


def _parse_json(text: str):
    try:
        return json.loads(text, object_pairs_hook=_json_object, parse_constant=_json_constant)
    except DocumentError:
        raise
    except (ValueError, RecursionError) as e:
        raise DocumentError(f"not valid JSON ({clip(e)})") from None


# --- YAML ------------------------------------------------------------------------------------------------------------

def _yaml_loader():
    import yaml

    class StrictLoader(yaml.SafeLoader):
        """SafeLoader that refuses a key written twice in one mapping (a merge key `<<` may still override)."""

        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen: dict = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=True)
                    line = key_node.start_mark.line + 1
                    try:
                        if key in seen:
                            raise DocumentError(f"key {shown(key)} is given twice (lines {seen[key]} and {line}); "
                                                "keep one")
                        seen[key] = line
                    except TypeError:  # an unhashable key: SafeLoader refuses it itself
                        continue
            return super().construct_mapping(node, deep)

    return yaml, StrictLoader


def expanded_size(node, limit: int) -> int:
    """How many values the composed YAML node stands for once every alias is expanded, counting up to just past
    `limit`. Aliases share nodes, so sizes are memoized per node: the walk is linear in the file, not in the
    expansion. A node that contains itself is a DocumentError."""
    import yaml

    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(n) -> int:
        key = id(n)
        if key in sizes:
            return sizes[key]
        if key in open_:
            raise DocumentError(f"an alias contains itself (line {n.start_mark.line + 1}); write the value out")
        open_.add(key)
        total = 1
        if isinstance(n, yaml.SequenceNode):
            children = n.value
        elif isinstance(n, yaml.MappingNode):
            children = [c for pair in n.value for c in pair]
        else:
            children = []
        for child in children:
            total += size(child)
            if total > limit:
                break  # far enough: the caller refuses it
        open_.discard(key)
        sizes[key] = total
        return total

    return size(node)


def _parse_yaml(text: str, max_nodes: int):
    yaml, StrictLoader = _yaml_loader()
    loader = StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        n = expanded_size(node, max_nodes)
        if n > max_nodes:
            raise DocumentError(f"expands to more than {max_nodes} values once its aliases (*name) are filled in; "
                                "an experiment file holds a few settings")
        return loader.construct_document(node)
    except DocumentError:
        raise
    except yaml.YAMLError as e:  # yaml's errors name line and column
        raise DocumentError(f"not valid YAML ({clip(e)})") from None
    except RecursionError:
        raise DocumentError("nested too deeply to be a settings file") from None
    finally:
        loader.dispose()
