"""Jobs: the per-hospital chain that a new drop triggers."""

import dagster as dg

hospital_chain_job = dg.define_asset_job(
    "process_hospital",
    selection=dg.AssetSelection.assets("dicom_index", "image_cache", "image_predictions", "study_predictions"),
    description="Index, cache and predict one hospital partition (requested by the new-drop sensor).",
)
