"""Task data: one loader for the hub, the offline PyPI packages and user files, all yielding the same Items.

    items.py     the Item, DataError, and how options are written and matched
    readers.py   rows of a file (JSON, JSONL, CSV, parquet) and of a package's files by layout
    hub.py       whether the hub can be used (offline settings, a fast probe) and its rows
    sources.py   one task's rows from the hub, its offline package or a file
    adapters.py  per-task row adapters, named on the task's registry entry
    builders.py  one item builder per answer type
    load.py      load_task: the source choice, the items, the info dict and its note

Everything task-specific is on the task's registry entry (registry.TASKS): answer type, hub id and split, offline
package (files per split, layout, adapter), hub adapter, option count, notes.
"""
from data.items import DataError, Item, render_options
from data.load import load_task
from data.sources import DATA_SOURCES

__all__ = ["DATA_SOURCES", "DataError", "Item", "load_task", "render_options"]
