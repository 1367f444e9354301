"""`frepo.export` (and `frepo export`): any set frepo reads, written for other tools by `frepo.io.export`."""

from __future__ import annotations

import os
from pathlib import Path

from ..base.errors import FrepoError, check_argument
from ..io.artifact import DistilledSet
from ..io.export import export as write_export
from .evaluate import SourceConfig, configure, read_set


def export(
    ds: DistilledSet | str | Path,
    out: str | Path,
    layout: str,
    space: str | None = None,
    source: SourceConfig | None = None,
) -> Path:
    """Write a set into the folder `out` in `layout` (imagefolder, pt or npz; `frepo.io.export.LAYOUTS`), its
    images in `space` (pt only; default: `frepo.io.export.default_space`); returns the manifest's path.

    `ds`: a DistilledSet, frepo's file, a run directory (its set), an export folder, or another tool's file
    read as `frepo.evaluate` reads it, with `source=SourceConfig(dataset=..., preprocess=..., entry=...)`."""
    check_argument("ds", ds, (DistilledSet, str, os.PathLike), "a DistilledSet or the path of a set")
    source = configure(source=source)[1]  # checked, a copy
    if not isinstance(ds, DistilledSet):
        ds = read_set(ds, source)
    elif (source.dataset, source.preprocess, source.entry) != (None, "auto", None):
        raise FrepoError("source's dataset, preprocess and entry apply to files, not to a loaded DistilledSet")
    return write_export(ds, out, layout, space)
