"""benchmarks/bench_real_samples.py on folders of real mammograms it has never seen: any layout, name and format,
DICOM as stored, the evaluator's own truth. Inputs are synthetic, built in `tmp_path`; the real folder is read by
one test only, for discovery, and skipped when it is absent."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.sequence import Sequence

from mammo_pipeline.synth.toy_labels import synthetic_image
from mammo_pipeline_tests.test_benchmarks import bench_module

bench = bench_module("bench_real_samples")


def _gray(seed: int, height: int = 80) -> np.ndarray:
    """uint8 [height, 0.8 height]: a toy breast (`synth.toy_labels`)."""
    return synthetic_image(np.random.default_rng(seed), biopsy=False, mag=False, height=height)


def _dicom(path: Path, name: str, pixels: np.ndarray | None = None, **header: object) -> Path:
    """An MG DICOM file at `path` (any name, any folder), its pixels a toy breast, `header` set on top."""
    bench.wrap_as_dicom(name, _gray(len(name)) if pixels is None else pixels, "L", "CC", path)
    if header:
        ds = dcmread(path)
        for keyword, value in header.items():
            setattr(ds, keyword, value)
        ds.save_as(path, enforce_file_format=True)
    return path


def _mixed_folder(root: Path) -> Path:
    """A folder as an evaluator might hand it over: a DICOM file without extension two folders down, a `.dcm`, an
    8-bit RGB JPEG, a 16-bit PNG with an unpatterned name, a text file, and notes that are never images."""
    _dicom(root / "patient7" / "study1" / "IM000001", "p7")
    _dicom(root / "exam3_R_MLO.dcm", "e3")
    rgb = np.stack([_gray(1)] * 3, axis=-1)
    rgb[..., 0] = np.clip(rgb[..., 0].astype(int) + 20, 0, 255)  # a tinted export
    Image.fromarray(rgb, "RGB").save(root / "case12_left_cc.jpg", quality=95)
    deep = _gray(2).astype(np.uint16) * 257  # 16-bit: values above 255
    Image.fromarray(deep).save(root / "scan_0042.png")
    (root / "notes.txt").write_text("not an image")
    (root / "README.md").write_text("# read me")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "truth.csv").write_text("image,clip\n")
    return root


def test_discover_finds_dicom_at_any_depth_and_name_and_raster_images_and_names_the_file_it_skips(tmp_path):
    files, skipped = bench.discover(_mixed_folder(tmp_path))
    assert [(f.name, f.kind) for f in files] == [
        ("case12_left_cc", "raster"),
        ("exam3_R_MLO", "dicom"),
        ("patient7/study1/IM000001", "dicom"),
        ("scan_0042", "raster"),
    ]
    assert files[2].rel == "patient7/study1/IM000001" and files[2].image_uid == bench._uid("p7")
    # once, with the reason; README, the truth CSV and hidden files are notes, not skipped images
    assert len(skipped) == 1 and skipped[0][0] == "notes.txt" and "neither DICOM" in skipped[0][1]


def test_real_images_reads_every_format_and_name_not_only_exam_side_view_pngs(tmp_path):
    """Until stop 67 only PNGs named `exam_L_CC` (and one fixed DICOM path) were read: this folder gave nothing."""
    images = {name: (pixels, lat, view) for name, pixels, lat, view in bench.real_images(_mixed_folder(tmp_path))}
    assert set(images) == {"case12_left_cc", "exam3_R_MLO", "patient7/study1/IM000001", "scan_0042"}
    jpeg, lat, view = images["case12_left_cc"]
    assert jpeg.ndim == 2 and jpeg.dtype == np.uint8 and (lat, view) == ("L", "CC")  # RGB made gray, side from name
    png, lat, view = images["scan_0042"]
    assert png.dtype == np.uint16 and png.max() > 255 and (lat, view) == ("", "")  # 16 bits kept, no side guessed
    assert images["patient7/study1/IM000001"][1:] == ("L", "CC")  # a DICOM file's side from its header


def test_a_bare_data_set_without_preamble_is_dicom_when_a_forced_read_finds_pixel_data(tmp_path):
    ds = dcmread(_dicom(tmp_path / "x", "bare"))
    del ds.file_meta
    ds.preamble = None
    ds.save_as(tmp_path / "IM_BARE", implicit_vr=True, little_endian=True)
    assert (tmp_path / "IM_BARE").read_bytes()[:2] == b"\x08\x00"  # starts with a group 0008 element
    assert bench.classify(tmp_path / "IM_BARE") == ("dicom", bench._uid("bare"))


def test_a_truncated_image_is_skipped_with_its_reason_and_the_rest_lands(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    Image.fromarray(_gray(3)).save(real / "a.png")
    Image.fromarray(_gray(4)).save(real / "b.png")
    (real / "b.png").write_bytes((real / "b.png").read_bytes()[:60])  # header kept, pixels cut
    files, _ = bench.discover(real)
    landed, skipped = bench.land(files, tmp_path / "drop", rewrap=False, spacing_mm=None)
    assert [f.name for f in landed.values()] == ["a"]
    assert [rel for rel, _ in skipped] == ["b.png"] and "cannot be read" in skipped[0][1]


@pytest.mark.parametrize(
    ("stem", "expected"),
    [
        ("1_L_CC", ("L", "CC")),
        ("0_L-MLO", ("L", "MLO")),
        ("exam_R_CC", ("R", "CC")),
        ("case7_LCC", ("L", "CC")),
        ("RMLO", ("R", "MLO")),
        ("img_r_mlo_2", ("R", "MLO")),
        ("left_cc", ("L", "CC")),
        ("Patient 3 RIGHT-MLO", ("R", "MLO")),
        ("MG1_J2KI", ("", "")),
        ("scan_0042", ("", "")),
        ("calcc", ("", "")),  # inside a word: no token
        ("LCC2", ("", "")),
    ],
)
def test_laterality_view_reads_a_side_and_view_token_in_any_spelling(stem, expected):
    assert bench.laterality_view(stem) == expected


@pytest.mark.parametrize(
    ("name", "exam"),
    [
        ("nyu-gmic/0_L-CC", "nyu-gmic/0"),
        ("nyu-breast_cancer_classifier/2_R_CC", "nyu-breast_cancer_classifier/2"),
        ("site/case12_left_cc", "site/case12"),
        ("scan_0042", "scan_0042"),  # no token: an exam of its own, never merged with scan_0043
    ],
)
def test_exam_of_is_the_name_before_the_side_and_view(name, exam):
    assert bench.exam_of(name) == exam


def _file(name: str, suffix: str = ".png", uid: str | None = None) -> bench.RealFile:
    return bench.RealFile(name, name + suffix, Path(name + suffix), "dicom" if uid else "raster", uid)


def test_truth_csv_matches_paths_with_or_without_extension_and_reads_each_spelling(tmp_path):
    csv = tmp_path / "truth.csv"
    csv.write_text("image,clip,mag\na.png,1,0\nsub/b,true,\nc.dcm,False,yes\nd,,\n")
    table = bench.read_truth(csv)
    got = {f.name: bench.truth_of(f, table) for f in map(_file, ["a", "sub/b", "d", "e"])}
    got["c"] = bench.truth_of(_file("c", ".dcm", "1.2"), table)
    assert got == {
        "a": bench.Truth(True, False),
        "sub/b": bench.Truth(True, None),
        "c": bench.Truth(False, True),
        "d": bench.Truth(None, None),  # named, clip left empty: not known
        "e": bench.Truth(None, None),  # not named
    }


def test_truth_csv_errors_name_the_file_and_line(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("image,clip\na,maybe\n")
    with pytest.raises(bench.TruthError, match=r"t\.csv, line 2: 'maybe' is not 1/0"):
        bench.read_truth(csv)
    csv.write_text("file,label\na,1\n")
    with pytest.raises(bench.TruthError, match="needs the columns image and clip"):
        bench.read_truth(csv)


def test_a_truth_csv_in_the_folder_is_found_and_the_flag_wins(tmp_path):
    assert bench.truth_csv(tmp_path, None) is None
    (tmp_path / "truth.csv").write_text("image,clip\n")
    assert bench.truth_csv(tmp_path, None) == tmp_path / "truth.csv"
    assert bench.truth_csv(tmp_path, tmp_path / "other.csv") == tmp_path / "other.csv"


def test_the_built_in_truth_speaks_only_for_the_shared_set():
    table = bench.builtin_truth()
    assert bench.truth_of(_file("nyu-breast_cancer_classifier/2_R_CC"), table) == bench.Truth(True, False)
    assert bench.truth_of(_file("dicom-wg04/MG1_JPLY", ".dcm", "1.2"), table) == bench.Truth(False, False)
    assert bench.truth_of(_file("site/2_R_CC"), table) == bench.Truth(None, None)  # same stem, another folder


def _preds(truth: list[bool | None], flags: list[bool], p: list[float]) -> pd.DataFrame:
    n = len(truth)
    return pd.DataFrame(
        {
            "name": [f"img{i}" for i in range(n)],
            "p_biopsy": p,
            "p_mag": [0.1] * n,
            "has_biopsy_marker": flags,
            "is_mag_view": [False] * n,
            "needs_review": [False] * n,
            "truth_clip": pd.Series(truth, dtype=object),
            "truth_mag": pd.Series([None if t is None else False for t in truth], dtype=object),
        }
    )


def test_images_without_truth_are_printed_with_a_question_mark_and_left_out_of_the_counts_and_ranking(capsys):
    # img2 (no truth) is flagged and scored highest: counted, it would be a wrong flag and rank the clip 2nd
    preds = _preds([True, False, None, False], [True, False, True, False], [0.6, 0.1, 0.9, 0.2])
    bench.print_images(preds)
    bench.print_ranking(preds)
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("img")}
    assert [rows[f"img{i}"][-1] for i in range(4)] == ["clip", "-", "?", "-"]
    assert "RESULT biopsy flag right on 3/3 (target all), mag flagged on 0 (target 0)" in out
    assert "1 of 4 images have no truth" in out
    assert "RANKING biopsy ROC-AUC on these images 1.000: clip image(s) ranked [1] of 3 " in out


def test_a_study_is_clip_free_only_when_every_image_truth_is_known():
    assert bench.study_truth([False, True, None]) is True
    assert bench.study_truth([False, None]) is None
    assert bench.study_truth([False, False]) is False


def test_a_contact_sheet_title_is_red_only_against_a_known_truth():
    rows = list(_preds([True, None, False], [False, True, False], [0.1, 0.9, 0.1]).itertuples())
    assert [bench.title_wrong(r) for r in rows] == [True, False, False]


def test_dicom_files_land_byte_for_byte_and_rewrapped_only_on_request(tmp_path):
    real = tmp_path / "real"
    src = _dicom(real / "sub" / "IM1", "one", WindowCenter=2047, WindowWidth=4095)
    files, _ = bench.discover(real)
    landed, skipped = bench.land(files, tmp_path / "as-stored", rewrap=False, spacing_mm=0.07)
    assert skipped == [] and list(landed) == ["00000"]
    assert (tmp_path / "as-stored" / "00000").read_bytes() == src.read_bytes()
    landed, _ = bench.land(files, tmp_path / "rewrapped", rewrap=True, spacing_mm=0.07)
    ds = dcmread(tmp_path / "rewrapped" / "00000.dcm")
    assert "WindowCenter" not in ds and ds.Modality == "MG" and ds.SOPInstanceUID == bench._uid("sub/IM1")
    assert "ImagerPixelSpacing" not in ds  # the spacing is written for raster images only, as before


def _encoding(path: Path, name: str, sop: str, predecessor: str) -> Path:
    """A lossy copy of an image: its own SOP Instance UID, the uncompressed predecessor in Source Image Sequence."""
    item, purpose = Dataset(), Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = "121320", "DCM", "Uncompressed predecessor"
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", predecessor
    item.PurposeOfReferenceCodeSequence = Sequence([purpose])
    return _dicom(path, name, SOPInstanceUID=sop, SourceImageSequence=Sequence([item]))


def test_copies_and_encodings_of_one_image_count_once_and_the_first_by_path_is_the_image(tmp_path):
    _dicom(tmp_path / "a.dcm", "a")
    shutil.copyfile(tmp_path / "a.dcm", tmp_path / "b_copy")  # the same SOP Instance UID
    _encoding(tmp_path / "c_j2k.dcm", "c", "1.2.3.3", "1.2.3.1")
    _encoding(tmp_path / "d_jpeg.dcm", "d", "1.2.3.5", "1.2.3.1")  # another encoding of c's image
    Image.fromarray(_gray(5)).save(tmp_path / "e.png")
    files, _ = bench.discover(tmp_path)
    assert bench.first_files(files) == {"a": "a", "b_copy": "a", "c_j2k": "c_j2k", "d_jpeg": "c_j2k", "e": "e"}
    kept, copies = bench.first_of_each_image(files)
    assert [f.name for f in kept] == ["a", "c_j2k", "e"] and [(f.name, k) for f, k in copies] == [
        ("b_copy", "a"),
        ("d_jpeg", "c_j2k"),
    ]


def test_the_shared_real_folder_holds_ten_files_of_nine_images():
    realdata = bench.realdata_dir()
    if not realdata.is_dir():
        pytest.skip(f"{realdata} is absent (the real samples live only beside the project)")
    files, skipped = bench.discover(realdata)
    assert len(files) == 10 and skipped == []
    first = bench.first_files(files)
    assert len(set(first.values())) == 9
    assert first["dicom-wg04/MG1_JPLY"] == "dicom-wg04/MG1_J2KI"  # two lossy encodings of one film
    assert {bench.laterality_view(Path(f.name).name) for f in files if f.kind == "raster"} == {
        ("L", "CC"),
        ("R", "CC"),
        ("L", "MLO"),
        ("R", "MLO"),
    }


@pytest.fixture(scope="module")
def model_home(tmp_path_factory) -> Path:
    """A home with a tiny trained and exported model whose current.json the benchmark borrows: `MINI` without a
    second look (about 15 s; with one, 70 s on a loaded 2-core machine), so its biopsy flag is the global
    network's and the benchmark prints no crops."""
    from dataclasses import replace

    from mammo_pipeline.model.export import export_onnx
    from mammo_pipeline.model.train import train_model
    from mammo_pipeline.settings import Settings
    from mammo_pipeline.synth.toy_labels import make_labels
    from mammo_pipeline_tests.model.conftest import MINI

    home = tmp_path_factory.mktemp("bench-real") / "home"
    settings = Settings.under(home, pretrained="none", salt="s", inference_threads=1).ensure_dirs()
    result = train_model(settings, make_labels(settings, n=48, seed=0), replace(MINI, second_look=False))
    export_onnx(settings, result.ref)
    return home


def test_main_runs_a_folder_of_any_files_and_leaves_images_without_truth_out(model_home, tmp_path, capsys):
    real = _mixed_folder(tmp_path / "real")
    shutil.copyfile(real / "exam3_R_MLO.dcm", real / "patient7" / "exam3_copy")  # the same SOP Instance UID
    _dicom(real / "ct" / "slice1", "ct", Modality="CT", SOPClassUID="1.2.840.10008.5.1.4.1.1.2")
    _dicom(real / "raw" / "proc1", "proc", PresentationIntentType="FOR PROCESSING")
    (real / "truth.csv").write_text("image,clip\nexam3_R_MLO.dcm,1\ncase12_left_cc,0\npatient7/study1/IM000001,false\n")
    sheet = tmp_path / "sheet.png"
    assert bench.main(["--home", str(model_home), "--realdata", str(real), "--out", str(sheet)]) == 0
    out = capsys.readouterr().out
    assert "7 files, 5 images (5 DICOM files, 2 raster images; 1 a copy under an indexed SOP Instance UID" in out
    assert "  patient7/exam3_copy: the same image as exam3_R_MLO (index: duplicate), counted once" in out
    assert "  REFUSED ct/slice1: index quarantined it `not_mammography`" in out
    assert "  SKIPPED notes.txt: neither DICOM" in out
    assert "  NOT SCORED raw/proc1: indexed as `for_processing`" in out  # indexed, never rendered: said, not lost
    table = out.split(f"{'image':40} p_biopsy")[1].split("RESULT")[0].strip().splitlines()[1:]  # under the header
    rows = {line.split()[0]: line.split() for line in table}
    assert set(rows) == {"case12_left_cc", "exam3_R_MLO", "patient7/study1/IM000001", "scan_0042"}
    assert all(len(r) == 7 for r in rows.values())  # image, p_biopsy, p_mag, biopsy, mag, review, truth
    assert {name: r[-1] for name, r in rows.items()} == {
        "case12_left_cc": "-",
        "exam3_R_MLO": "clip",
        "patient7/study1/IM000001": "-",
        "scan_0042": "?",  # unpatterned 16-bit PNG, no truth: run all the same
    }
    assert "RESULT biopsy flag right on " in out and "/3 (target all)" in out
    assert "1 of 4 images have no truth" in out
    assert "of 3 by p_biopsy" in out or "RANKING" not in out  # ranked among the three with truth
    assert "(truth ?)" in out and "studies without truth left out" in out
    assert sheet.stat().st_size > 0


def test_current_model_takes_a_version_of_the_home_or_refuses_one_it_lacks(tmp_path):
    """A model held back from promotion is current.json's while the promoted one predicts (stop 68's fresh-clone
    demo: 9 of 9 real images right with the first, 7 of 9 with the second), so `--model` names which to run."""
    from mammo_pipeline import promotions
    from mammo_pipeline.model.ref import ModelRef
    from mammo_pipeline.settings import Settings

    settings = Settings.under(tmp_path / "home").ensure_dirs()
    older = ModelRef("m-older", "snap", "m-older", 64, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), onnx_file="model.onnx")
    promotions.save_ref(settings, older)
    older.with_(model_version="m-newer", folder="m-newer").save(settings.models)  # current.json
    assert bench.current_model(settings.home)[1].model_version == "m-newer"
    assert bench.current_model(settings.home, "m-older")[1].model_version == "m-older"
    with pytest.raises(SystemExit, match="no model was promoted"):
        bench.current_model(settings.home, "promoted")
    with pytest.raises(SystemExit, match="m-gone"):
        bench.current_model(settings.home, "m-gone")
