"""mammo-pipeline: sort screening mammograms into biopsy-marker and magnification views."""

__version__ = "0.1.0"
