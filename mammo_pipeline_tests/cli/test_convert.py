"""`mammo convert`: folders and files to PNG, failures reported, exit code."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner
from PIL import Image

from mammo_pipeline.cli.convert import command
from mammo_pipeline_tests.dicom.crafted import breast, make_ds


def _write(path, rows=200, cols=160, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    make_ds(breast(rows, cols, seed=seed), WindowCenter=2047, WindowWidth=4096).save_as(path, enforce_file_format=True)
    return path


def test_convert_folder_recursively_and_report_failures(tmp_path):
    src = tmp_path / "drop"
    _write(src / "a.dcm")
    _write(src / "sub" / "b", rows=100, cols=300, seed=1)  # DICOM files often have no extension
    (src / "sub" / "readme.txt").write_text("hello")
    (src / "_READY").touch()  # the pipeline's own marker, as the index skips it: not a failed file
    out = tmp_path / "out"
    result = CliRunner().invoke(command, [str(src), "--out", str(out), "--max-side", "64", "-s", "-j", "1"])
    assert result.exit_code == 0, result.output
    assert "converted 2 of 3" in result.output
    assert "failed [not_dicom]" in result.output and "readme.txt" in result.output
    a, b = Image.open(out / "drop" / "a.png"), Image.open(out / "drop" / "sub" / "b.png")
    assert (a.size, a.mode) == ((51, 64), "L") and b.size == (64, 21)
    assert np.asarray(a).max() > 100
    assert not list(out.rglob(".*.tmp"))


def test_convert_single_file_name(tmp_path):
    path = _write(tmp_path / "IMG0001.dcm")
    result = CliRunner().invoke(command, [str(path), "--out", str(tmp_path / "o"), "-s", "-j", "1"])
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "o" / "IMG0001.png").size == (160, 200)  # --max-side 1024 never upscales


def test_convert_nothing_converted_exits_nonzero(tmp_path):
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"\0" * 10)
    result = CliRunner().invoke(command, [str(bad), "--out", str(tmp_path / "o"), "-s", "-j", "1"])
    assert result.exit_code != 0
    assert "nothing converted" in result.output and "bad.dcm" in result.output


def test_convert_help_has_example():
    result = CliRunner().invoke(command, ["--help"])
    assert result.exit_code == 0 and "Example:" in result.output


def test_convert_name_clashes_write_every_file(tmp_path):
    a = _write(tmp_path / "a" / "IM0001.dcm", seed=1)
    b = _write(tmp_path / "b" / "IM0001.dcm", seed=2)
    out = tmp_path / "out"
    result = CliRunner().invoke(command, [str(a), str(b), "--out", str(out), "-s", "-j", "1"])
    assert result.exit_code == 0, result.output
    assert "converted 2 of 2" in result.output and "1 PNG name(s) clashed" in result.output
    first, second = np.asarray(Image.open(out / "IM0001.png")), np.asarray(Image.open(out / "IM0001-2.png"))
    assert not np.array_equal(first, second)  # two images, neither overwrote the other


def test_convert_refuses_for_processing_and_multi_frame_like_the_cache(tmp_path):
    from pydicom.uid import generate_uid

    good = _write(tmp_path / "good.dcm")
    raw = tmp_path / "raw.dcm"
    ds = make_ds(breast(64, 48), SOPClassUID="1.2.840.10008.5.1.4.1.1.1.2.1")
    ds.save_as(raw, enforce_file_format=True)
    stack = tmp_path / "stack.dcm"
    frames = np.stack([breast(64, 48, seed=i) for i in range(3)])
    make_ds(frames, SOPInstanceUID=generate_uid()).save_as(stack, enforce_file_format=True)
    out = tmp_path / "out"
    result = CliRunner().invoke(command, [str(good), str(raw), str(stack), "--out", str(out), "-s", "-j", "1"])
    assert result.exit_code == 0, result.output
    assert "converted 1 of 3" in result.output
    assert "failed [for_processing]" in result.output and "failed [tomosynthesis]" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["good.png"]


def test_convert_gives_a_damaged_file_the_reason_the_index_quarantines_it_for(settings, tmp_path):
    """A user's report: a file dicom_index quarantines as `truncated` (cut inside its header) failed convert as
    `[no_pixel_data]`, with a raw pydicom UserWarning printed before it."""
    import re
    import warnings

    from pydicom.uid import ExplicitVRLittleEndian

    from mammo_pipeline.dicom.index import index_hospital
    from mammo_pipeline.dicom.source_paths import pseudonymize_path
    from mammo_pipeline.warehouse import read_partition
    from mammo_pipeline_tests.dicom.test_headers import write_mg

    drop = settings.landing / "h1" / "d1"
    write_mg(drop / "good.dcm")
    cut = write_mg(drop / "cut.dcm")  # as test_index's _corrupt_drop: the end of the pixels cut off
    cut.write_bytes(cut.read_bytes()[:-500])
    head = write_mg(drop / "cut_in_header.dcm")  # cut inside the File Meta's Transfer Syntax UID: pydicom warns
    data = head.read_bytes()
    head.write_bytes(data[: data.index(ExplicitVRLittleEndian.encode()) + 2])
    write_mg(drop / "nopix.dcm", pixels=False)
    (drop / "readme.dcm").write_text("not a dicom file at all" * 20)
    index_hospital(settings, "h1")
    quarantine = read_partition(settings, "quarantine", "h1")
    by_path = dict(zip(quarantine["rel_path"], quarantine["reason"], strict=True))
    salt = settings.pseudonym_salt()
    names = ("cut.dcm", "cut_in_header.dcm", "nopix.dcm", "readme.dcm")
    expected = {name: by_path[pseudonymize_path(salt, f"h1/d1/{name}")] for name in names}
    assert expected["cut_in_header.dcm"] == "truncated" and expected["nopix.dcm"] == "no_pixel_data"

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(command, [str(drop), "--out", str(tmp_path / "out"), "-s", "-j", "1"])
    assert result.exit_code == 0, result.output
    failed = {name: reason for reason, name in re.findall(r"failed \[(\w+)\] \S*/(\S+):", result.output)}
    assert {name: failed.get(name) for name in names} == expected, result.output
    assert "converted 1 of 5" in result.output and "Warning" not in result.output
    assert [str(w.message) for w in caught] == []
