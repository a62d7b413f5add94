"""DICOM: headers and index (what a file says), decode and normalize (what it shows), quarantine (what failed)."""
