"""Synthetic hospital drops for tests, benchmarks and the demo (no real mammograms can be fetched)."""

from mammo_pipeline.synth.drops import SynthReport, generate_drops, read_truth
from mammo_pipeline.synth.identities import hospital_slugs

__all__ = ["SynthReport", "generate_drops", "hospital_slugs", "make_contact_sheet", "read_truth"]


def __getattr__(name: str):
    if name == "make_contact_sheet":  # matplotlib-free import path for workers
        from mammo_pipeline.synth.contact_sheet import make_contact_sheet

        return make_contact_sheet
    raise AttributeError(name)
