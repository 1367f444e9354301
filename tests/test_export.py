"""`frepo export`: every layout reads back into the set it was written from, so evaluating the export gives
the original's accuracy under the same seed; the PNGs open in PIL and are `frepo show`'s grid."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_blobs_npz
from PIL import Image

import frepo
from frepo.base.errors import FrepoError
from frepo.cli import main
from frepo.config import DataConfig
from frepo.data.registry import load_dataset
from frepo.io.artifact import DistilledSet, save_distilled
from frepo.io.export import LAYOUTS, MANIFEST, MANIFEST_KEYS, export, to_uint8
from frepo.io.foreign import detect_format, load_export, load_set
from frepo.jobs.visualize import class_grid, grid_array

FAST = {"models": 1, "steps": 20, "width": 8}


def _subset(tmp_path, channels: int) -> tuple[DistilledSet, str]:
    data = make_blobs_npz(tmp_path / f"blobs{channels}.npz", channels=channels)
    ds = frepo.make_subset(DataConfig(dataset=str(data)), 2)
    return ds, str(save_distilled(ds, tmp_path / f"subset{channels}.safetensors"))


def _learned(tmp_path) -> tuple[DistilledSet, str]:
    """A colour set like a distilled one: images pushed out of the pixel range, learned labels."""
    ds, _ = _subset(tmp_path, channels=3)
    g = torch.Generator().manual_seed(0)
    images = 1.8 * ds.images + 0.3 * torch.randn(ds.images.shape, generator=g)
    labels = ds.targets() + 0.05 * torch.randn(ds.targets().shape, generator=g)
    learned = DistilledSet(images, labels, ds.preprocessing, {**ds.meta, "kind": "distilled", "step": 42})
    return learned, str(save_distilled(learned, tmp_path / "learned.safetensors"))


def test_real_images_round_trip_exactly_in_every_layout(tmp_path):
    ds, path = _subset(tmp_path, channels=1)
    checksum = frepo.load_distilled(path).meta["checksum"]
    learns = {**FAST, "steps": 150}  # at 20 steps every network predicted one class: equal accuracies said little
    original = frepo.evaluate(path, **learns)
    # 3 classes: learnt (62 here), not at one class's share (33.3); the floor is that share, not near 62, as
    # another CPU's rounding moves a 45-image accuracy by a few images
    assert original.accuracies[0] > 100 / 3 + 1
    kernel = frepo.evaluate(path, protocol="krr", models=2, width=8)
    for layout in LAYOUTS:
        folder = tmp_path / layout
        manifest = export(path, folder, layout)
        keys = set(json.loads(manifest.read_text()))
        assert keys == set(MANIFEST_KEYS) - ({"image_files"} if layout != "imagefolder" else set())  # documented
        assert detect_format(folder) == "frepo-export" and json.loads(manifest.read_text())["layout"] == layout
        back = load_export(folder)
        # Real pixels survive 8-bit PNGs, and the standardisation is elementwise: the very same tensors (the
        # official npz layout holds N×K labels: the class ids its manifest records come back from their targets,
        # not as learned labels, which --soft-labels would have trained on where the set refuses).
        assert torch.equal(back.images, ds.images), layout
        assert torch.equal(back.labels, ds.labels), layout
        assert back.dataset == ds.dataset and back.meta["source"]["original"] == checksum
        assert frepo.evaluate(folder, **learns).accuracies == original.accuracies, layout
        assert frepo.evaluate(folder, protocol="krr", models=2, width=8).accuracies == kernel.accuracies, layout


def test_learned_sets_round_trip_and_pngs_are_the_show_grid(tmp_path):
    ds, path = _learned(tmp_path)
    learns = {**FAST, "steps": 100}  # at 20 and 40 steps every network predicted one class (33 %)
    original = frepo.evaluate(path, **learns)
    assert original.accuracies[0] > 100 / 3 + 1  # above one class's share: learnt (53 here)
    for layout in ("pt", "npz"):  # float tensors in the preprocessed space: nothing is lost
        export(path, tmp_path / layout, layout)
        back = load_export(tmp_path / layout)
        assert torch.equal(back.images, ds.images) and torch.equal(back.labels, ds.targets())
        assert frepo.evaluate(tmp_path / layout, **learns).accuracies == original.accuracies, layout
        assert torch.equal(
            back.transform(np.zeros((2, 8, 8, 3), np.uint8)), ds.transform(np.zeros((2, 8, 8, 3), np.uint8))
        )
    # DD-Ranking's files load with plain torch.load, the pair in safetensors without pickle.
    from safetensors.torch import load_file

    assert torch.equal(torch.load(tmp_path / "pt" / "images.pt"), ds.images)
    assert float(torch.load(tmp_path / "pt" / "lr.pt")) == pytest.approx(0.01)
    assert torch.equal(load_file(str(tmp_path / "pt" / "data.safetensors"))["labels"], ds.labels)
    with np.load(tmp_path / "npz" / "step000042.npz") as npz:  # the official FRePo layout
        assert npz["image"].shape == (6, 8, 8, 3) and np.array_equal(npz["label"], ds.targets().numpy())

    export(path, tmp_path / "png", "imagefolder")
    manifest = json.loads((tmp_path / "png" / "export.json").read_text())
    files = manifest["image_files"]
    pixels = np.stack([np.asarray(Image.open(tmp_path / "png" / f)) for f in files])  # PIL opens every one
    assert pixels.dtype == np.uint8 and pixels.shape == (6, 8, 8, 3)
    assert np.array_equal(pixels, to_uint8(ds.pixels()))  # clipped to [0, 1], then 8-bit
    assert [f.split("/")[0] for f in files] == ["0", "0", "1", "1", "2", "2"]
    assert json.loads((tmp_path / "png" / "labels.json").read_text())["files"] == files
    assert torch.equal(torch.load(tmp_path / "png" / "labels.pt"), ds.labels)
    # The folder of PNGs is frepo show's grid.
    shown = grid_array(ds)
    rebuilt, _ = class_grid(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255, ds.class_ids(), 3)
    rebuilt = rebuilt.mul(255).add(0.5).floor().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(shown, rebuilt)
    back = load_export(tmp_path / "png")
    unit = ds.preprocessing.to_unit(ds.images)
    inside = (unit > 0) & (unit < 1)
    gap = (ds.preprocessing.to_unit(back.images) - unit).abs()
    assert float(gap[inside].max()) <= 0.5 / 255 + 1e-4  # only the 8-bit rounding where nothing was clipped
    assert torch.equal(back.labels, ds.labels)


def test_only_what_an_export_wrote_is_read_as_the_export(tmp_path):
    """A set copied into an export's folder was read as the export's set (its manifest was found beside any
    file), and so was one class folder of an imagefolder export."""
    ds, path = _learned(tmp_path)
    export(path, tmp_path / "pt", "pt")
    export(path, tmp_path / "png", "imagefolder")
    assert detect_format(tmp_path / "pt" / "images.pt") == "frepo-export"  # a file the export wrote: the export
    assert torch.equal(load_set(tmp_path / "pt" / "images.pt")[0].images, ds.images)
    (tmp_path / "other").mkdir()
    other, _ = _subset(tmp_path / "other", channels=3)
    stray = save_distilled(other, tmp_path / "pt" / "mine.safetensors")
    assert detect_format(stray) == "frepo"
    assert torch.equal(load_set(stray)[0].images, other.images)  # read as itself, not as the export
    assert detect_format(tmp_path / "png" / "0") == "imagefolder"  # a class folder, not the whole export
    (tmp_path / "pt" / "export.json").write_text("{")  # a damaged manifest still marks its folder an export
    with pytest.raises(FrepoError, match="cannot read the export manifest"):
        load_set(tmp_path / "pt" / "data.safetensors")


def test_show_and_export_read_an_export(tmp_path, capsys):
    """`frepo show EXPORT` said "file not found: EXPORT/distilled.safetensors" (it took the folder for a run),
    and `frepo export EXPORT` refused it: both read frepo's own exports now."""
    ds, path = _learned(tmp_path)
    export(path, tmp_path / "pt", "pt")
    assert main(["show", str(tmp_path / "pt")]) == 0
    assert (tmp_path / "pt.png").is_file()  # beside the export: a file in it would be a stranger to its manifest
    assert main(["show", str(tmp_path / "pt" / "images.pt"), "--out", str(tmp_path / "one.png")]) == 0
    assert main(["show", str(tmp_path / "pt" / "images.pt")]) == 0  # a file of it: its grid beside it too
    assert not (tmp_path / "pt" / "images.png").exists() and (tmp_path / "pt.png").is_file()
    assert main(["export", str(tmp_path / "pt"), "--to", str(tmp_path / "npz"), "--format", "npz"]) == 0
    assert torch.equal(load_export(tmp_path / "npz").images, ds.images)
    capsys.readouterr()
    # Into a folder inside it: the export then held a stranger, and exporting into it again was refused.
    assert main(["export", str(tmp_path / "pt"), "--to", str(tmp_path / "pt" / "npz"), "--format", "npz"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is inside the set's own folder" in err, err
    assert not (tmp_path / "pt" / "npz").exists()
    for name in ("export.json", "images.pt"):  # a file of the export reads as the whole export
        with pytest.raises(FrepoError, match="is inside the set's own folder"):
            frepo.export(tmp_path / "pt" / name, tmp_path / "pt" / "sub", "npz")
    frepo.export(tmp_path / "pt", tmp_path / "pt", "pt")  # in place: read first, then replaced whole
    assert torch.equal(load_export(tmp_path / "pt").images, ds.images)


def test_an_export_into_a_run_folder_is_refused_through_links(tmp_path):
    """A run's set reached through a link from outside, and a run whose set is a link to a file elsewhere: the
    folder refused is the run's either way (a folder holding distilled.safetensors is a run to frepo)."""
    _, path = _learned(tmp_path)
    run, other = tmp_path / "run", tmp_path / "other"
    run.mkdir()
    other.mkdir()
    shutil.copy(path, run / "distilled.safetensors")
    (tmp_path / "link.safetensors").symlink_to(run / "distilled.safetensors")
    (other / "distilled.safetensors").symlink_to(path)
    for source, folder in ((tmp_path / "link.safetensors", run), (other / "distilled.safetensors", other)):
        with pytest.raises(FrepoError, match="is inside the set's own folder"):
            frepo.export(source, folder / "sub", "npz")
    frepo.export(tmp_path / "link.safetensors", tmp_path / "beside", "npz")  # outside both: allowed


def test_show_and_export_read_another_tools_set_as_evaluate_does(tmp_path, capsys, monkeypatch):
    """`frepo show` and `frepo export` read frepo's files only ("not a safetensors file" for a DC res_*.pt):
    they take evaluate's --dataset/--preprocess/--entry, and a folder of class folders is a set, not a run
    without its file."""
    subset, _ = _subset(tmp_path, channels=3)
    data = subset.meta["dataset"]
    dc = tmp_path / "res_DC_blobs.pt"
    torch.save({"data": [[subset.images, subset.class_ids()]]}, dc)
    capsys.readouterr()
    assert main(["show", str(dc)]) == 2
    assert "does not say which dataset it belongs to: pass --dataset" in capsys.readouterr().err
    assert main(["show", str(dc), "--dataset", data, "--preprocess", "frepo", "--out", str(tmp_path / "dc.png")]) == 0
    assert main(["show", str(tmp_path / "subset3.safetensors"), "--out", str(tmp_path / "own.png")]) == 0
    assert Image.open(tmp_path / "dc.png").size == Image.open(tmp_path / "own.png").size  # titled apart
    assert main(["export", str(dc), "--to", str(tmp_path / "dc"), "--format", "pt"]) == 2
    assert "pass --dataset" in capsys.readouterr().err
    exported = ["export", str(dc), "--to", str(tmp_path / "dc"), "--format", "pt", "--dataset", data]
    assert main([*exported, "--preprocess", "frepo"]) == 0
    assert torch.equal(load_export(tmp_path / "dc").images, subset.images)
    export(subset, tmp_path / "png", "imagefolder")
    (tmp_path / "png" / "export.json").unlink()  # class folders copied out without the manifest
    (tmp_path / "png" / "config.json").write_text("{}")  # another tool's: no run for lack of a checkpoint
    assert main(["show", str(tmp_path / "png"), "--dataset", data, "--out", str(tmp_path / "folder.png")]) == 0
    (tmp_path / "png" / "metrics.jsonl").write_text("{}\n")  # nor with its log: its config is not a distillation's
    assert main(["show", str(tmp_path / "png"), "--dataset", data, "--out", str(tmp_path / "folder.png")]) == 0
    capsys.readouterr()
    assert main(["show", str(tmp_path / "subset3.safetensors"), "--preprocess", "dc"]) == 2
    assert "carries its own preprocessing; drop --preprocess" in capsys.readouterr().err
    # frepo's own set is drawn without its dataset, whatever --data-dir says
    import frepo.io.foreign.load

    monkeypatch.setattr(frepo.io.foreign.load, "load_dataset", lambda *a, **k: pytest.fail("the dataset was read"))
    assert main(["show", str(tmp_path / "subset3.safetensors"), "--data-dir", str(tmp_path), "--no-download"]) == 0


def test_two_exports_of_one_set_are_the_same_bytes(tmp_path):
    """Exports are reproducible artefacts: the same set gives byte-identical files in every layout, whatever
    the temp names of the atomic writes (torch.save used to embed them) and the time of the export (zip
    entries carry one, at 2 s resolution)."""
    _, path = _learned(tmp_path)
    for layout in LAYOUTS:
        export(path, tmp_path / "first" / layout, layout)
    time.sleep(2.1)
    for layout in LAYOUTS:
        export(path, tmp_path / "second" / layout, layout)
    first = sorted(f.relative_to(tmp_path / "first") for f in (tmp_path / "first").rglob("*") if f.is_file())
    second = sorted(f.relative_to(tmp_path / "second") for f in (tmp_path / "second").rglob("*") if f.is_file())
    assert first == second and len(first) > 3 * len(LAYOUTS)
    differ = [str(f) for f in first if (tmp_path / "first" / f).read_bytes() != (tmp_path / "second" / f).read_bytes()]
    assert differ == []


def test_a_failed_export_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    """A full disk at data.safetensors left the new .pt files beside the old manifest (evaluated as the old
    set), or, into a new folder, files without a manifest that the retry then refused."""
    import errno

    from frepo.io import export as export_module

    learned, learned_path = _learned(tmp_path)
    _, subset_path = _subset(tmp_path, channels=3)
    folder = tmp_path / "ex"
    export(subset_path, folder, "pt")
    before = {f.name: f.read_bytes() for f in folder.iterdir()}
    original = export_module.atomic_save_safetensors

    def full_disk(tensors, target, metadata=None):
        if Path(target).name == "data.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(tensors, target, metadata)

    with monkeypatch.context() as m:
        m.setattr(export_module, "atomic_save_safetensors", full_disk)
        for target in (folder, tmp_path / "new"):
            with pytest.raises(FrepoError, match=f"No space left on device while writing {target}; the previous"):
                export(learned_path, target, "pt")
    assert {f.name: f.read_bytes() for f in folder.iterdir()} == before  # the old export, untouched
    assert not (tmp_path / "new").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folder left
    export(learned_path, tmp_path / "new", "pt")  # the retry
    export(learned_path, folder, "pt")  # a new version replaces the old whole
    assert torch.equal(load_export(folder).images, learned.images)
    (folder / "notes.txt").write_text("mine")  # which replacing it whole would delete
    with pytest.raises(FrepoError, match=r"holds files besides its export \(notes.txt\)"):
        export(subset_path, folder, "pt")
    (folder / "notes.txt").unlink()
    link = tmp_path / "link"
    link.symlink_to(folder)
    export(subset_path, link, "imagefolder")  # through a link: the folder it names is replaced
    assert (
        link.is_symlink()
        and load_export(link).meta["source"]["original"] == load_export(folder).meta["source"]["original"]
    )


def test_an_export_killed_between_its_two_renames_gets_its_previous_version_back(tmp_path):
    """A kill -9 after the old export was moved aside and before the new one took its place left no export,
    and the next export to that folder deleted both as stale temp folders."""
    from frepo.base.atomic import atomic_folder

    _, subset_path = _subset(tmp_path, channels=3)
    folder = tmp_path / "ex"
    export(subset_path, folder, "pt")
    before = {f.name: f.read_bytes() for f in folder.iterdir()}
    driver = textwrap.dedent(f"""
        import os
        from pathlib import Path
        real = os.replace
        def killed_at_the_second(src, dst):
            if Path(dst) == Path({str(folder.resolve())!r}) and not str(src).endswith(".previous.tmp"):
                os._exit(9)  # the old export moved aside, the new one not yet in its place
            return real(src, dst)
        os.replace = killed_at_the_second
        from frepo.io.export import export
        export({str(subset_path)!r}, {str(folder)!r}, "npz")
    """)
    assert subprocess.run([sys.executable, "-c", driver], capture_output=True, timeout=300).returncode == 9
    assert not folder.exists() and len(list(tmp_path.glob(".ex.*.previous.tmp"))) == 1
    sibling = tmp_path / ".ex.b.abcdefgh.previous.tmp"  # moved aside by a write of `ex.b`: not ex's to take
    sibling.mkdir()
    with pytest.raises(ValueError, match="abandoned"), atomic_folder(folder):
        assert {f.name: f.read_bytes() for f in folder.iterdir()} == before  # back before the next write
        raise ValueError("abandoned")
    assert {f.name: f.read_bytes() for f in folder.iterdir()} == before
    # and the killed export's lock file, which the next export takes (test_a_second_export_into_a_folder...)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".ex.")) == [sibling.name, ".ex.lock"]


def test_a_second_export_into_a_folder_being_written_is_refused(tmp_path):
    """Two exports into one folder at once: the second removed the first's temp folder, as a killed write's,
    under it. Now it is refused, naming the first; a lock file a killed export left is taken and goes."""
    import fcntl

    _, subset_path = _subset(tmp_path, channels=3)
    folder = tmp_path / "ex"
    lock = tmp_path / ".ex.lock"
    with open(lock, "w") as first:  # another process's export, under way
        first.write("4242\n")
        first.flush()
        fcntl.flock(first, fcntl.LOCK_EX)
        with pytest.raises(FrepoError, match=r"another frepo process is writing --to .*ex \(pid 4242\)"):
            export(subset_path, folder, "pt")
    assert not folder.exists()
    assert lock.exists()  # as a kill -9 leaves it
    export(subset_path, folder, "pt")
    assert (folder / "export.json").is_file() and not lock.exists()
    # Another user's lock file, left by a kill in a shared folder: opened read-only (flock needs no write
    # access), where every later export had been refused.
    import errno
    import os

    import frepo.base.lock as lock_module

    lock.write_text("")
    real_open = os.open

    def not_ours(path, flags, *mode):
        if str(path) == str(lock.resolve()) and flags & os.O_RDWR:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *mode)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lock_module.os, "open", not_ours)
        export(subset_path, folder, "npz")
    assert (folder / "export.json").is_file()


def test_safetensors_files_take_one_metadata_key(tmp_path):
    """safetensors writes several metadata keys in no fixed order (equal files would differ in bytes), so
    frepo's writer takes one key, a JSON string, and refuses more."""
    from frepo.base.atomic import atomic_save_safetensors

    tensors = {"x": torch.arange(3.0)}
    for name in ("a", "b"):
        atomic_save_safetensors(tensors, tmp_path / f"{name}.safetensors", {"frepo": json.dumps({"k": 1, "j": 2})})
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    with pytest.raises(ValueError, match="one metadata key"):
        atomic_save_safetensors(tensors, tmp_path / "c.safetensors", {"frepo": "{}", "other": "x"})
    assert not (tmp_path / "c.safetensors").exists()


def test_export_and_evaluate_through_the_cli(tmp_path, capsys):
    _, path = _subset(tmp_path, channels=1)
    original, exported = tmp_path / "original.json", tmp_path / "exported.json"
    assert main(["evaluate", path, "--models", "1", "--steps", "10", "--width", "8", "--json", str(original)]) == 0
    assert main(["export", path, "--to", str(tmp_path / "out"), "--format", "imagefolder"]) == 0
    args = [
        "evaluate",
        str(tmp_path / "out"),
        "--models",
        "1",
        "--steps",
        "10",
        "--width",
        "8",
        "--json",
        str(exported),
    ]
    assert main(args) == 0
    assert "frepo export (imagefolder) read with its stored preprocessing" in capsys.readouterr().out
    a, b = json.loads(original.read_text()), json.loads(exported.read_text())
    assert a["accuracies"] == b["accuracies"] and a["model_seeds"] == b["model_seeds"]

    not_folder = tmp_path / "file.txt"
    not_folder.write_text("x")
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    cases = [
        (["export", path, "--to", str(tmp_path / "x"), "--format", "zip"], "unknown format 'zip'"),
        (["export", path, "--to", str(not_folder), "--format", "pt"], "not a folder"),
        (["export", path, "--to", str(used), "--format", "pt"], "holds no frepo export"),
        (["export", str(tmp_path / "missing.safetensors"), "--to", str(tmp_path / "y"), "--format", "pt"], "not found"),
        (["evaluate", str(tmp_path / "out"), "--preprocess", "dc"], "carries its own preprocessing"),
    ]
    for args, fragment in cases:
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("frepo: error:") and fragment in err[0], err
    assert (used / "notes.txt").read_text() == "mine"
    (tmp_path / "out" / "export.json").write_text("{not json")
    with pytest.raises(FrepoError, match="cannot read the export manifest"):
        load_export(tmp_path / "out")


def test_another_export_s_preprocessing_is_a_clear_error(tmp_path, capsys):
    """preprocessing.safetensors copied in from an export of other images (colour into grey): `frepo evaluate`
    ended in a traceback of the first transform; now one line naming the file, before any network trains."""
    grey, _ = _subset(tmp_path, channels=1)
    colour, _ = _subset(tmp_path, channels=3)
    export(grey, tmp_path / "grey", "pt")
    export(colour, tmp_path / "colour", "pt")
    (tmp_path / "grey" / "preprocessing.safetensors").write_bytes(
        (tmp_path / "colour" / "preprocessing.safetensors").read_bytes()
    )
    with pytest.raises(FrepoError, match=r"preprocessing.safetensors is for other images \(pre_mean has 3 values"):
        load_export(tmp_path / "grey")
    assert main(["evaluate", str(tmp_path / "grey"), "--models", "1", "--steps", "2"]) == 2
    assert "is for other images" in capsys.readouterr().err


def test_an_imagefolder_export_lists_its_images_as_torchvision_does(tmp_path):
    """labels.pt was in the set's order, but ImageFolder lists the PNGs class folder by class folder: paired by
    index, a set not grouped by class (another tool's interleaved one) trained on other images' labels."""
    from torchvision.datasets import ImageFolder

    ds, _ = _learned(tmp_path)
    g = torch.Generator().manual_seed(1)
    shuffled = torch.randperm(len(ds.images), generator=g)
    interleaved = DistilledSet(ds.images[shuffled], ds.labels[shuffled], ds.preprocessing, ds.meta)
    assert not torch.equal(interleaved.class_ids(), interleaved.class_ids().sort().values)
    export(interleaved, tmp_path / "png", "imagefolder")
    folder = ImageFolder(str(tmp_path / "png"))
    labels = torch.load(tmp_path / "png" / "labels.pt")
    back = load_export(tmp_path / "png")
    assert len(folder) == len(labels) == len(back.images) == len(ds.images)
    for k, (path, class_id) in enumerate(folder.samples):
        assert int(labels[k].argmax()) == class_id
        assert (
            Path(path).relative_to(tmp_path / "png").as_posix()
            == json.loads((tmp_path / "png" / "labels.json").read_text())["files"][k]
        )
    # the same set, grouped by class (stably): each image with its own label
    order = torch.argsort(interleaved.class_ids(), stable=True)
    assert torch.equal(back.labels, interleaved.labels[order])
    # and the manifest's class id of each image is that of its file (it listed them in the set's order)
    manifest = json.loads((tmp_path / "png" / MANIFEST).read_text())
    assert manifest["labels"]["class_ids"] == [c for _, c in folder.samples]
    pixels = torch.from_numpy(np.stack([np.asarray(folder[k][0]) for k in range(len(folder))]))
    assert torch.equal(pixels, torch.from_numpy(to_uint8(interleaved.pixels()[order])))


def test_an_npz_export_out_of_its_folder_is_not_read_as_an_official_file(tmp_path, capsys):
    """Copied out of its export, the npz was read as the official FRePo's (the reference's preprocessing, not
    its set's): 58.9 % where 62.6 % was due, without a word. It says where it must be read now; in its folder,
    and for the official code (which reads `image` and `label`), it is as before."""
    ds, _ = _learned(tmp_path)
    export(ds, tmp_path / "npz", "npz")
    (written,) = (tmp_path / "npz").glob("step*.npz")
    with np.load(written) as archive:
        assert set(archive.files) == {"image", "label", "frepo_export"}
    assert torch.equal(load_export(tmp_path / "npz").images, ds.images)
    shutil.copy(written, tmp_path / written.name)
    with pytest.raises(FrepoError, match=r"was written by frepo export.*read it in its export's folder, with "
                       r"export.json and preprocessing.safetensors beside it"):  # fmt: skip
        load_set(tmp_path / written.name, dataset=str(make_blobs_npz(tmp_path / "blobs3.npz", channels=3)))
    assert main(["evaluate", str(tmp_path / written.name), "--models", "1", "--steps", "1"]) == 2
    assert "was written by frepo export" in capsys.readouterr().err
    blobs = str(tmp_path / "blobs3.npz")  # named, its space is the user's word
    assert torch.equal(load_set(tmp_path / written.name, dataset=blobs, preprocess="frepo")[0].images, ds.images)
    # ... --split val too, whose refusal is then the one that fits (no hold-out), not "name the preprocessing"
    val = ["evaluate", str(tmp_path / written.name), "--split", "val", "--preprocess", "frepo", "--dataset", blobs]
    assert main(val) == 2
    assert "no validation hold-out" in capsys.readouterr().err


def test_another_export_s_preprocessing_of_the_same_shape_is_refused(tmp_path, capsys):
    """One of the same image shape passed the shape check: it was applied (a ZCA for a standardisation) under a
    warning that said the manifest's preprocessing was used, and the networks scored 42 % where 89 % was due."""
    data = make_blobs_npz(tmp_path / "blobs3.npz", channels=3)
    plain = frepo.make_subset(DataConfig(dataset=str(data), preprocess="standard"), 2)
    whitened = frepo.make_subset(DataConfig(dataset=str(data), preprocess="zca"), 2)
    assert (plain.preprocessing.kind, whitened.preprocessing.kind) == ("standard", "zca")
    export(plain, tmp_path / "plain", "pt")
    export(whitened, tmp_path / "whitened", "pt")
    (tmp_path / "plain" / "preprocessing.safetensors").write_bytes(
        (tmp_path / "whitened" / "preprocessing.safetensors").read_bytes()
    )
    with pytest.raises(FrepoError, match=r"plain/preprocessing.safetensors is not the preprocessing this export "
                       r"recorded \(kind 'standard' recorded, 'zca' in the file.*another export's"):  # fmt: skip
        load_export(tmp_path / "plain")
    assert main(["evaluate", str(tmp_path / "plain"), "--models", "1", "--steps", "2"]) == 2
    assert "is not the preprocessing this export recorded" in capsys.readouterr().err
    load_export(tmp_path / "whitened")  # its own: read as written


def test_a_file_changed_after_export_is_named_in_a_warning(tmp_path, capsys):
    """The manifest records each file's sha256: an images file copied in from another export (read with this
    export's preprocessing, it trains to chance) is named; an untouched export reads without a warning."""
    subset_set, subset = _subset(tmp_path, channels=3)
    _, learned = _learned(tmp_path)
    export(subset, tmp_path / "a", "pt")
    export(learned, tmp_path / "b", "pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_export(tmp_path / "a")
    (tmp_path / "a" / "images.pt").write_bytes((tmp_path / "b" / "images.pt").read_bytes())
    with pytest.warns(UserWarning, match=r"a: images.pt differ from what frepo export wrote") as caught:
        load_export(tmp_path / "a")
    assert len(caught) == 1
    # Attributed to the caller's line, whatever the path through frepo (a fixed stacklevel pointed into frepo).
    with pytest.warns(frepo.FrepoWarning, match=r"images.pt differ from what frepo export wrote") as caught:
        frepo.export(tmp_path / "a", tmp_path / "c", "pt")
    assert [Path(w.filename) for w in caught] == [Path(__file__)], [w.filename for w in caught]
    # so `module="frepo"` cannot select frepo's warnings: their category does (a UserWarning, as before)
    assert issubclass(frepo.FrepoWarning, UserWarning)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=frepo.FrepoWarning)
        frepo.export(tmp_path / "a", tmp_path / "d", "pt")
    # frepo imported through a symlinked folder (macOS's /var, a linked venv): its frames carry that path
    import subprocess
    import sys

    (tmp_path / "linked").symlink_to(Path(frepo.__file__).resolve().parent.parent)
    script = tmp_path / "user.py"
    script.write_text(
        "import sys, warnings\n"
        f"sys.path.insert(0, {str(tmp_path / 'linked')!r})\n"
        "import frepo\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        f"    frepo.load_export({str(tmp_path / 'a')!r})\n"
        "print([(w.filename, w.lineno) for w in caught])\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env={"PATH": ""})
    assert proc.stdout.strip() == f"[({str(script)!r}, 6)]", proc.stdout + proc.stderr[-2000:]
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "a"), "--models", "1", "--steps", "2", "--width", "8"]) == 0
    err = capsys.readouterr().err
    assert "frepo: warning: " in err and "images.pt differ from what frepo export wrote" in err, err
    # An image added to a class folder of an imagefolder export is not read, and not silently
    export(subset, tmp_path / "png", "imagefolder")
    first = sorted((tmp_path / "png").glob("*/*.png"))[0]
    (first.parent / "extra.png").write_bytes(first.read_bytes())
    with pytest.warns(UserWarning, match=r"left out \w+/extra.png, which frepo export did not write"):
        assert len(load_export(tmp_path / "png").images) == len(subset_set.images)


def test_class_folders_sort_in_class_order_for_torchvision():
    from frepo.io.export import _folder_names

    assert _folder_names(["airplane", "automobile", "bird"]) == ["airplane", "automobile", "bird"]
    # Unsafe names (Fashion-MNIST's "T-shirt/top") or names that sort out of class order get a class number.
    assert _folder_names(["T-shirt/top", "Trouser"]) == ["0_T-shirt_top", "1_Trouser"]
    assert _folder_names([str(i) for i in range(12)])[:3] == ["00_0", "01_1", "02_2"]


def test_pt_export_in_ddranking_spaces(tmp_path, monkeypatch):
    """`--space ddranking[-zca]`: the set re-expressed through its pixels in DD-Ranking's normalisation or its
    kornia ZCA (checked here against an independent float64 computation; against the ddranking package itself
    in test_ddranking_interop.py), its stored preprocessing the same space, class ids beside the learned labels."""
    from frepo.io import ddranking

    ds, path = _learned(tmp_path)
    # An unknown dataset keeps the set's own space by default and refuses DD-Ranking's with the reason.
    export(path, tmp_path / "own", "pt")
    assert json.loads((tmp_path / "own" / "export.json").read_text())["images"]["space"] == "preprocessed"
    with pytest.raises(FrepoError, match="DD-Ranking evaluates CIFAR10"):
        export(path, tmp_path / "refused", "pt", "ddranking")
    with pytest.raises(FrepoError, match="applies to --format pt"):
        export(path, tmp_path / "refused", "npz", "ddranking")

    # Pretend the blobs are a dataset DD-Ranking knows (8×8 images), with made-up constants.
    mean, std = [0.3, 0.5, 0.6], [0.2, 0.25, 0.3]
    monkeypatch.setitem(ddranking.DATASETS, ds.dataset, ("BLOBS", (mean, std), 8))
    monkeypatch.setattr(ddranking, "ZCA_DATASETS", (ds.dataset,))
    pixels = ds.preprocessing.to_unit(ds.images).double()  # unclipped
    raw = load_dataset(ds.dataset)
    test = raw.x_test[:16]

    manifest = json.loads(export(path, tmp_path / "dd", "pt").read_text())  # the default for a known dataset
    assert manifest["images"]["space"] == "ddranking" and manifest["ddranking"]["dataset"] == "BLOBS"
    assert manifest["ddranking"]["use_zca"] is False and manifest["ddranking"]["soft_label"]["soft_label_criterion"]
    m, s = torch.tensor(mean).double().view(1, 3, 1, 1), torch.tensor(std).double().view(1, 3, 1, 1)
    expected = (pixels - m) / s
    images = torch.load(tmp_path / "dd" / "images.pt")
    scale = float(expected.abs().max())
    assert float((images.double() - expected).abs().max()) <= 1e-5 * scale
    assert torch.equal(torch.load(tmp_path / "dd" / "hard_labels.pt"), ds.class_ids())
    assert torch.equal(torch.load(tmp_path / "dd" / "labels.pt"), ds.labels)
    unit = torch.from_numpy(test).permute(0, 3, 1, 2).double() / 255
    back = load_export(tmp_path / "dd")
    assert float((back.transform(test).double() - (unit - m) / s).abs().max()) <= 1e-5 * scale
    assert float((back.images - images).abs().max()) == 0

    export(path, tmp_path / "zca", "pt", "ddranking-zca")
    # kornia's ZCAWhitening(eps=0.1) of [0, 1] pixels, fitted on the full training split, in float64 here.
    x = torch.from_numpy(raw.x_train).permute(0, 3, 1, 2).reshape(len(raw.x_train), -1).double() / 255
    centre = x.mean(0)
    cov = (x - centre).T @ (x - centre) / (len(x) - 1)
    evals, evecs = torch.linalg.eigh(cov)
    whiten = (evecs * (evals.clamp_min(0) + 0.1).rsqrt()) @ evecs.T
    expected = ((pixels.reshape(len(pixels), -1) - centre) @ whiten).reshape(pixels.shape)
    images = torch.load(tmp_path / "zca" / "images.pt")
    scale = float(expected.abs().max())
    # float32 storage of W and float32 products against this float64 fit: rounding of order 1e-6 of the scale.
    assert float((images.double() - expected).abs().max()) <= 1e-5 * scale
    test_expected = ((unit.reshape(len(unit), -1) - centre) @ whiten).reshape(unit.shape)
    assert float((load_export(tmp_path / "zca").transform(test).double() - test_expected).abs().max()) <= 1e-5 * scale
    assert json.loads((tmp_path / "zca" / "export.json").read_text())["ddranking"]["use_zca"] is True


def test_an_export_finds_its_dataset_where_its_set_did(tmp_path, monkeypatch):
    """An export records the --data-dir its set was distilled with: evaluated with --no-download elsewhere, it
    found no dataset ('not found'), where its set itself did."""
    from frepo.config import DataConfig
    from frepo.io.foreign import load_set
    from frepo.jobs.subset import make_subset

    monkeypatch.delenv("FREPO_DATA_DIR", raising=False)  # read first: the dataset is in the set's folder only
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    split = {f"{s}": rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8) for s, n in (("train", 200), ("test", 50))}
    np.savez(
        data / "mnist.npz",
        x_train=split["train"], y_train=np.arange(200) % 10, x_test=split["test"], y_test=np.arange(50) % 10,
    )  # fmt: skip
    ds = make_subset(DataConfig(dataset="mnist", data_dir=str(data), download=False, val_size=20), 1)
    export(ds, tmp_path / "pt", "pt")
    monkeypatch.chdir(tmp_path)
    found, raw = load_set(tmp_path / "pt", download=False)
    assert raw.name == "mnist" and len(raw.y_test) == 50
    torch.testing.assert_close(found.images, ds.images)


def _fake_mnist(folder: Path) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    x = {s: rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8) for s, n in (("train", 200), ("test", 50))}
    y = {"train": np.arange(200) % 10, "test": np.arange(50) % 10}
    np.savez(folder / "mnist.npz", x_train=x["train"], y_train=y["train"], x_test=x["test"], y_test=y["test"])


def test_ddranking_zca_finds_its_dataset_where_told_and_refuses_before_any_folder(tmp_path, monkeypatch, capsys):
    """`--space ddranking-zca` fits its ZCA on the set's dataset: it looked in the default folder only, not in
    --data-dir nor where the set was distilled from, and downloaded despite --no-download (or failed offline,
    leaving the --to folder's parents made). The --to folder is judged before the set is read."""
    from frepo.io import ddranking
    from frepo.jobs.subset import make_subset

    monkeypatch.delenv("FREPO_DATA_DIR", raising=False)
    monkeypatch.setenv("FREPO_CACHE", str(tmp_path / "cache"))  # the default folder: no dataset there
    _fake_mnist(tmp_path / "data")
    monkeypatch.setitem(ddranking.DATASETS, "mnist", ("MNIST", ([0.13], [0.31]), 28))  # as if DD-Ranking had it
    monkeypatch.setattr(ddranking, "ZCA_DATASETS", ("mnist",))
    ds = make_subset(DataConfig(dataset="mnist", data_dir=str(tmp_path / "data"), download=False, val_size=20), 1)
    path = str(save_distilled(ds, tmp_path / "set.safetensors"))
    recorded = json.loads(export(path, tmp_path / "recorded", "pt", "ddranking-zca").read_text())
    assert recorded["images"]["space"] == "ddranking-zca"  # the folder the set was distilled from
    (tmp_path / "data").rename(tmp_path / "moved")
    zca = ["--format", "pt", "--space", "ddranking-zca", "--no-download"]
    assert main(["export", path, "--to", str(tmp_path / "told"), *zca, "--data-dir", str(tmp_path / "moved")]) == 0
    assert torch.equal(torch.load(tmp_path / "told" / "images.pt"), torch.load(tmp_path / "recorded" / "images.pt"))
    capsys.readouterr()
    assert main(["export", path, "--to", str(tmp_path / "new" / "a"), *zca]) == 2
    err = capsys.readouterr().err
    assert "could not load mnist" in err and "downloads are off" in err, err  # not downloaded
    assert not (tmp_path / "new").exists()  # nothing made for an export that did not happen
    not_folder = tmp_path / "file.txt"
    not_folder.write_text("x")
    missing = str(tmp_path / "missing.safetensors")
    for to, said in ((str(not_folder), "is not a folder"), ("", "--to names no folder")):
        assert main(["export", missing, "--to", to, "--format", "pt"]) == 2  # the folder first, the set after
        assert said in capsys.readouterr().err
    (tmp_path / "told" / MANIFEST).write_text("{cut sho")
    assert main(["export", path, "--to", str(tmp_path / "told"), "--format", "pt"]) == 2
    assert f"holds a {MANIFEST} frepo cannot read" in capsys.readouterr().err


def test_the_python_export_reads_every_set_the_command_does(tmp_path):
    """frepo.export took a DistilledSet or frepo's file only: a run directory, an export folder and another
    tool's file (with its source) are read as `frepo export` reads them."""

    import frepo
    from frepo.config import DataConfig
    from frepo.jobs.subset import make_subset

    ds = make_subset(DataConfig(dataset="digits"), 2)
    frepo.save_distilled(ds, tmp_path / "run" / "distilled.safetensors")  # a finished run's set
    frepo.export(tmp_path / "run", tmp_path / "npz", "npz")
    with np.load(next((tmp_path / "npz").glob("*.npz"))) as written:  # an official FRePo file: image, label
        np.savez(tmp_path / "official.npz", image=written["image"], label=written["label"])
    frepo.export(tmp_path / "npz", tmp_path / "pt", "pt", space="frepo")  # an export
    official = frepo.SourceConfig(dataset="digits", preprocess="frepo")  # in the set's own space
    frepo.export(tmp_path / "official.npz", tmp_path / "from-npz", "pt", space="frepo", source=official)
    # The source's options as keywords, as frepo.evaluate takes them (export took source= only).
    frepo.export(
        tmp_path / "official.npz", tmp_path / "by-name", "pt", space="frepo", dataset="digits", preprocess="frepo"
    )
    for folder in ("pt", "from-npz", "by-name"):
        torch.testing.assert_close(load_export(tmp_path / folder).images, ds.images, rtol=0, atol=1e-6)
    with pytest.raises(FrepoError, match="apply to files, not to a loaded DistilledSet"):
        frepo.export(ds, tmp_path / "x", "pt", source=official)
    with pytest.raises(FrepoError, match="apply to files, not to a loaded DistilledSet"):
        frepo.export(ds, tmp_path / "x", "pt", dataset="digits")
    with pytest.raises(FrepoError, match="unknown option 'models' for SourceConfig"):
        frepo.export(tmp_path / "official.npz", tmp_path / "x", "pt", dataset="digits", models=3)
    with pytest.raises(FrepoError, match="does not say which dataset it belongs to"):
        frepo.export(tmp_path / "official.npz", tmp_path / "y", "pt")  # another tool's file names no dataset


def _edit_json(path: Path, edit) -> None:
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def _edit_preprocessing(folder: Path, params=None, **tensors) -> None:
    """Rewrite the export's preprocessing.safetensors with `params` (its JSON header) or tensors replaced."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = folder / "preprocessing.safetensors"
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
        held = {k: fh.get_tensor(k) for k in fh.keys()}
    if params is not None:
        meta = {**meta, "frepo_preprocessing": json.dumps(params(json.loads(meta["frepo_preprocessing"])))}
    save_file({**held, **tensors}, str(path), metadata=meta)


def _set(key, value):
    return lambda m: m["set"].__setitem__(key, value)


# An export edited by hand or damaged: each was a traceback (TypeError, KeyError, AttributeError, IndexError, a
# RuntimeError of torch's) or, for the last two, a set loaded as if whole; now one line that names the field.
DAMAGED = {
    "files": ("pt", lambda f: _edit_json(f / "export.json", lambda m: m.update(files=5)), "'files' must be an object"),
    "shape": (
        "pt",
        lambda f: _edit_json(f / "export.json", lambda m: m["images"].update(shape=[])),
        "'images' must be an object with \"shape\": \\[C, H, W\\]",
    ),
    "set": ("pt", lambda f: _edit_json(f / "export.json", lambda m: m.update(set=[1])), "'set' must be an object"),
    "no dataset": ("pt", lambda f: _edit_json(f / "export.json", lambda m: m.pop("dataset")), "lacks 'dataset'"),
    "dataset": (
        "pt",
        lambda f: _edit_json(f / "export.json", lambda m: m.update(dataset=5)),
        "'dataset' must be a dataset name or path, got 5",
    ),
    "val_size": (
        "pt",
        lambda f: _edit_json(f / "export.json", _set("val_size", "x")),
        "set 'val_size' must be an integer >= 0, got 'x'",
    ),
    "classes": (
        "pt",
        lambda f: _edit_json(f / "export.json", lambda m: m.update(classes=list(range(len(m["classes"]))))),
        "'classes' must be class names",
    ),
    "image_files": (
        "imagefolder",
        lambda f: _edit_json(f / "export.json", lambda m: m.update(image_files=[5] * len(m["image_files"]))),
        "'image_files' must be a list of file names",
    ),
    "params": ("pt", lambda f: _edit_preprocessing(f, params=lambda p: [1]), "parameters are not a JSON object"),
    "zca_reg": (
        "pt",
        lambda f: _edit_preprocessing(f, params=lambda p: {**p, "zca_reg": "x"}),
        "is not one of .* with a zca_reg >= 0",
    ),
    "std size": ("pt", lambda f: _edit_preprocessing(f, pre_std=torch.ones(3)), "pre_std has 3 values"),
    "std 0": ("pt", lambda f: _edit_preprocessing(f, pre_std=torch.zeros(1)), "per-channel std must be positive"),
    "not utf-8": ("pt", lambda f: (f / "export.json").write_bytes(b"\xff\xfe{}"), "cannot read the export manifest"),
    "labels": (
        "pt",
        lambda f: torch.save({"a": 1}, f / "labels.pt"),
        "expected an array of labels \\(class ids or learned labels\\), found a dict",
    ),
    "nan labels": (
        "pt",
        lambda f: torch.save(torch.full((len(torch.load(f / "labels.pt")), 3), float("nan")), f / "labels.pt"),
        "the labels contain NaN or infinite values",
    ),
    "empty": (
        "pt",
        lambda f: (
            torch.save(torch.zeros(0, 1, 8, 8), f / "images.pt"),
            torch.save(torch.zeros(0, dtype=torch.long), f / "labels.pt"),
        ),
        "holds no images",
    ),
}


@pytest.mark.parametrize("damage", DAMAGED)
def test_a_damaged_export_is_one_line(tmp_path, damage):
    layout, edit, message = DAMAGED[damage]
    ds, _ = _subset(tmp_path, channels=1)
    export(ds, tmp_path / "e", layout)
    edit(tmp_path / "e")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", frepo.FrepoWarning)  # the changed files' warning, where it gets that far
        with pytest.raises(FrepoError, match=message):
            load_export(tmp_path / "e")
        read_through = "labels.pt" if layout == "pt" else "export.json"  # a file of the export names it too
        assert main(["show", str(tmp_path / "e" / read_through), "--out", str(tmp_path / "grid.png")]) == 2
    assert not (tmp_path / "grid.png").exists()


def test_a_pt_export_is_grouped_by_class_as_ddranking_takes_it(tmp_path):
    """DD-Ranking's soft-label metric labels image i of images.pt by its position (class i // ipc) and ignores
    hard_labels.pt: another tool's interleaved set, exported in its own order, was scored on other labels."""
    ds, _ = _learned(tmp_path)
    shuffled = torch.randperm(len(ds.images), generator=torch.Generator().manual_seed(2))
    interleaved = DistilledSet(ds.images[shuffled], ds.labels[shuffled], ds.preprocessing, ds.meta)
    export(interleaved, tmp_path / "pt", "pt", "frepo")
    order = torch.argsort(interleaved.class_ids(), stable=True)
    hard = torch.load(tmp_path / "pt" / "hard_labels.pt")
    assert torch.equal(hard, interleaved.class_ids()[order]) and torch.equal(hard, hard.sort().values)
    assert torch.equal(torch.load(tmp_path / "pt" / "images.pt"), interleaved.images[order])
    assert torch.equal(torch.load(tmp_path / "pt" / "labels.pt"), interleaved.labels[order])
    manifest = json.loads((tmp_path / "pt" / MANIFEST).read_text())
    assert manifest["labels"]["class_ids"] == hard.tolist()
    back = load_export(tmp_path / "pt")
    assert torch.equal(back.labels, interleaved.labels[order])


# fastai's ImageWoof folders, sorted as frepo numbers them (ImageNet indices 155, 159, ..., 273 in that order)
WOOF = ["n02086240", "n02087394", "n02088364", "n02089973", "n02093754"]
WOOF += ["n02096294", "n02099601", "n02105641", "n02111889", "n02115641"]


def test_a_ddranking_export_numbers_the_classes_as_ddranking_does():
    """DD-Ranking's ImageWoof class c is the c-th of its list of ImageNet indices [193, 182, 258, ...] (not sorted),
    its Tiny ImageNet classes ImageFolder's sorted wnids; frepo's ids went out unchanged: labels permuted."""
    import tempfile

    from frepo.data.preprocess import Preprocessing

    g = torch.Generator().manual_seed(0)
    images = torch.randn(10, 3, 128, 128, generator=g)
    labels = torch.eye(10) + 0.01 * torch.randn(10, 10, generator=g)  # image i of frepo's class i
    meta = {"dataset": "imagewoof", "classes": WOOF, "mirror_invariant": False}
    woof = DistilledSet(images, labels, Preprocessing("standard", torch.zeros(3), torch.ones(3)), meta)
    with tempfile.TemporaryDirectory() as folder:
        export(woof, Path(folder) / "pt", "pt", "ddranking")
        hard = torch.load(Path(folder) / "pt" / "hard_labels.pt")
        soft = torch.load(Path(folder) / "pt" / "labels.pt")
        manifest = json.loads((Path(folder) / "pt" / MANIFEST).read_text())
        # frepo reads its own export back in its own numbering (its test split's): in DD-Ranking's, an ImageWoof
        # export evaluated by frepo was tested on permuted labels
        back = load_export(Path(folder) / "pt")
    shown = [5, 4, 8, 2, 0, 3, 1, 9, 6, 7]  # the images in DD-Ranking's class order: frepo's classes 5, 4, ...
    assert back.classes == WOOF and torch.equal(back.labels, labels[shown])
    assert hard.tolist() == list(range(10))  # one image a class, grouped by DD-Ranking's ids
    # DD-Ranking's class 0 is ImageNet index 193, the Australian terrier n02096294: frepo's class 5
    assert manifest["classes"][0] == "n02096294" and manifest["classes"][4] == "n02086240"
    assert torch.equal(soft[0], labels[5][[5, 4, 8, 2, 0, 3, 1, 9, 6, 7]])  # its label, columns in DD-Ranking's order
    assert torch.equal(soft.argmax(-1), hard)  # each image's learned label points at its DD-Ranking class
    from frepo.io import ddranking

    with pytest.raises(FrepoError, match="names its classes by words, and no tiny-imagenet-200/wnids.txt was found"):
        ddranking.class_ids("tiny_imagenet", ["Egyptian cat", "goldfish"])
    assert ddranking.class_ids("tiny_imagenet", ["n02124075", "n01443537", "n04067472"]) == [1, 0, 2]
    # a set naming them by words (the official archive has words.txt): the order from the dataset's wnids.txt
    from frepo.io.export import ddranking_class_ids

    words = DistilledSet(images[:3], torch.arange(3), woof.preprocessing, {**meta, "dataset": "tiny_imagenet"})
    words.meta["classes"] = ["Egyptian cat", "goldfish", "police van"]
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "tiny-imagenet-200").mkdir()
        (Path(folder) / "tiny-imagenet-200" / "wnids.txt").write_text("n02124075\nn01443537\nn04067472\n")
        assert ddranking_class_ids(words, folder) == [1, 0, 2]
    assert ddranking.class_ids("cifar10", [str(i) for i in range(10)]) == list(range(10))


def test_a_copied_out_export_is_not_read_in_another_space(tmp_path, capsys):
    """A pt export's data.safetensors copied out of its folder was read as a plain set in frepo's preprocessing of
    its dataset, not the space its manifest names; an npz copied out was refused by evaluate but taken by
    `distill --init`, in the reference's space. Both are said now, as evaluate says the npz."""
    data = make_blobs_npz(tmp_path / "blobs3.npz", channels=3)
    ds = frepo.make_subset(DataConfig(dataset=str(data), preprocess="standard"), 2)
    export(ds, tmp_path / "pt", "pt")
    shutil.copy(tmp_path / "pt" / "data.safetensors", tmp_path / "data.safetensors")
    with pytest.raises(FrepoError, match=r"was written by frepo export, in the space its export.json names"):
        load_set(tmp_path / "data.safetensors", dataset=str(data))
    assert load_set(tmp_path / "data.safetensors", dataset=str(data), preprocess="frepo")[0].images.shape[0] == 6
    export(ds, tmp_path / "npz", "npz")
    (written,) = (tmp_path / "npz").glob("step*.npz")
    shutil.copy(written, tmp_path / "start.npz")
    args = ["distill", "--dataset", str(data), "--ipc", "2", "--init", str(tmp_path / "start.npz"), "--steps", "1"]
    assert main([*args, "--out", str(tmp_path / "run")]) == 2
    assert "was written by frepo export" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_an_export_keeps_the_depth_its_set_was_distilled_with(tmp_path):
    """The manifest recorded no depth: a set distilled with a depth-5 Conv was evaluated at 3 once exported."""
    from frepo.eval import EvalConfig

    ds, _ = _learned(tmp_path)
    deep = DistilledSet(ds.images, ds.labels, ds.preprocessing, {**ds.meta, "config": {"model": {"depth": 2}}})
    for layout in LAYOUTS:
        export(deep, tmp_path / layout, layout)
        assert json.loads((tmp_path / layout / MANIFEST).read_text())["set"]["depth"] == 2
        assert EvalConfig().network_depth(load_export(tmp_path / layout).meta) == 2, layout
