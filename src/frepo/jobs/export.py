"""`frepo.export` (and `frepo export`): any set frepo reads, written for other tools by `frepo.io.export`."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from ..base.errors import FrepoError, check_argument, check_path
from ..base.fields import set_leaf
from ..io.artifact import DistilledSet
from ..io.export import check_target
from ..io.export import export as write_export
from .evaluate import SourceConfig, configure, read_set


def check_outside(source: str | os.PathLike, out: str | os.PathLike) -> None:
    """Refuse an export into a folder inside the set's own folder (a run or an export folder, given as the folder
    or as a file of it): an export of A into A/sub left A holding a stranger, and exporting into A again was then
    refused."""
    from ..io.export import MANIFEST
    from ..io.foreign.load import is_run

    if not str(out).strip():
        return
    target = Path(out).resolve()
    # The path as given and, for a link, what it points to: either one's folder may be a set's.
    for path in dict.fromkeys((Path(source).absolute(), Path(source).resolve())):
        folder = path.resolve() if path.is_dir() else path.parent.resolve()
        if not path.is_dir() and not ((folder / MANIFEST).is_file() or is_run(folder)):
            continue  # a file among others: the folder is no set's
        if folder in target.parents:
            raise FrepoError(
                f"--to {out} is inside the set's own folder {folder}, which would then hold it; use a folder outside it"
            )


def export(
    ds: DistilledSet | str | Path,
    out: str | Path,
    layout: str,
    space: str | None = None,
    source: SourceConfig | None = None,
    **source_options: Any,
) -> Path:
    """Write a set into the folder `out` in `layout` (imagefolder, pt or npz; `frepo.io.export.LAYOUTS`), its
    images in `space` (pt only; default: `frepo.io.export.default_space`); returns the manifest's path.

    `ds`: a DistilledSet, frepo's file, a run directory (its set), an export folder, or another tool's file
    read as `frepo.evaluate` reads it: `export(file, out, "pt", dataset="cifar10", preprocess="reference")` (the
    options of `SourceConfig`, as keywords as `frepo.evaluate` takes them, or `source=SourceConfig(...)`)."""
    check_argument("ds", ds, (DistilledSet, str, os.PathLike), "a DistilledSet or the path of a set")
    check_path("out", out)
    source = copy.deepcopy(source) if isinstance(source, SourceConfig) else source
    if source_options:  # only where a set is read from (evaluate's keywords also name training options)
        source = source or SourceConfig()
        for name, value in source_options.items():
            set_leaf(source, name, value)
    source = configure(source=source)[1]  # checked, a copy
    if not isinstance(ds, DistilledSet):
        check_outside(ds, out)
        check_target(out)  # before the set is read: another tool's file may need its dataset's ZCA fit
        ds = read_set(ds, source)
    elif (source.dataset, source.preprocess, source.entry) != (None, "auto", None):
        raise FrepoError("source's dataset, preprocess and entry apply to files, not to a loaded DistilledSet")
    return write_export(ds, out, layout, space, data_dir=source.data_dir, download=source.download)
