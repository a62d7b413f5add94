"""Metadata completeness per hospital x field, mag disagreements, and the heatmap."""

from __future__ import annotations

from PIL import Image

from mammo_pipeline.completeness import FIELDS, KIND_FIELDS, metadata_completeness
from mammo_pipeline.dicom.index import index_hospital
from mammo_pipeline_tests.dicom.test_headers import code_item, write_mg


def test_metadata_completeness_per_hospital_and_field(settings):
    mag = [code_item("R-102D6", "SNM3", "Magnification")]
    a = settings.landing / "hologic" / "d1"
    write_mg(a / "1.dcm", modifiers=mag, EstimatedRadiographicMagnificationFactor=1.0)  # modifier vs factor
    write_mg(a / "2.dcm", SeriesDescription="R CC MAG", VOILUTFunction="SIGMOID")
    write_mg(a / "3.dcm", SeriesDescription="R CC", EstimatedRadiographicMagnificationFactor=1.8)
    write_mg(a / "4.dcm", PixelSpacing=None, WindowCenter=None, WindowWidth=None, ImageLaterality=None)
    b = settings.landing / "siemens" / "d1"
    write_mg(b / "1.dcm", Grid="NONE")
    write_mg(b / "2.dcm", SeriesDescription="L CC C-View")
    write_mg(b / "3.dcm", SOPClassUID="1.2.840.10008.5.1.4.1.1.13.1.3", NumberOfFrames=1)  # tomosynthesis
    for hospital in ("hologic", "siemens"):
        index_hospital(settings, hospital)

    table, png = metadata_completeness(settings)
    got = table.set_index(["hospital", "field"])["fraction"]
    assert set(table["field"]) == set(FIELDS) | set(KIND_FIELDS.values())
    assert set(table["hospital"]) == {"hologic", "siemens"}
    kinds = table[table["field"].isin(KIND_FIELDS.values())].set_index(["hospital", "field"])["n_populated"]
    assert kinds["hologic", "image kind: 2d"] == 4 and kinds["hologic", "image kind: tomosynthesis"] == 0
    assert kinds["siemens", "image kind: 2d"] == 1 and kinds["siemens", "image kind: synthesized_2d"] == 1
    assert kinds["siemens", "image kind: tomosynthesis"] == 1 and got["siemens", "image kind: 2d"] == 1 / 3
    assert got["hologic", "view modifier"] == 0.25 and got["siemens", "view modifier"] == 0.0
    assert got["hologic", "series description says MAG/SPOT"] == 0.25
    assert got["hologic", "magnification factor"] == 0.5
    assert got["hologic", "magnification factor != 1"] == 0.25
    assert got["hologic", "VOI LUT function"] == 0.25
    assert got["hologic", "pixel spacing"] == 0.75 and got["hologic", "window"] == 0.75
    assert got["hologic", "laterality"] == 0.75 and got["siemens", "laterality"] == 1.0
    assert got["hologic", "meta_mag decided"] == 0.75 and got["siemens", "meta_mag decided"] == 0.0
    assert got["hologic", "mag fields disagree"] == 0.25
    assert got["hologic", "mag modifier but factor <= 1.0"] == 0.25
    assert (table.loc[table["hospital"] == "hologic", "n_images"] == 4).all()
    assert (table.loc[(table["hospital"] == "siemens") & table["field"].isin(FIELDS), "n_images"] == 2).all()

    assert png == settings.warehouse / "reports" / "metadata_completeness.png"
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] > 200
    assert (settings.warehouse / "reports" / "metadata_completeness.parquet").exists()


def test_metadata_completeness_without_index_still_writes_a_report(settings):
    table, png = metadata_completeness(settings)
    assert table.empty and png.exists()
