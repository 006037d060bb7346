"""One progress bar for long work (tqdm with an ETA): redrawn every second on a terminal, every 30 s in a log file
(a log gets a handful of lines per stage, not one per step)."""
from __future__ import annotations

import sys


def progress_bar(iterable=None, **kw):
    """``tqdm(iterable, **kw)`` with the kit's defaults (mininterval by terminal / log, dynamic width)."""
    from tqdm.auto import tqdm

    kw.setdefault("mininterval", 1.0 if sys.stderr.isatty() else 30.0)
    kw.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kw)
