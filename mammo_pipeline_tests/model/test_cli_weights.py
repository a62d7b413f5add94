from __future__ import annotations

import pytest
from click.testing import CliRunner

from mammo_pipeline.cli.weights import command
from mammo_pipeline.model import weights
from mammo_pipeline.model.weights import sha256_file


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("MAMMO_PRETRAINED", "imagenet")
    return tmp_path / "torch"


def test_status_explains_what_is_missing_and_fails_when_the_setting_asks_for_them(settings, torch_home, monkeypatch):
    """MAMMO_PRETRAINED=imagenet with no usable weights exits 1 (a script checks before training: it exited 0
    until stop 62); training from scratch needs none, so 0."""
    out = CliRunner().invoke(command, ["status"])
    assert out.exit_code == 1
    assert "torch cache" in out.output and "missing" in out.output and "mammo weights import" in out.output
    monkeypatch.setenv("MAMMO_PRETRAINED", "none")
    out = CliRunner().invoke(command, ["status"])
    assert out.exit_code == 0 and "Training from scratch" in out.output


def test_import_refuses_wrong_hash(tmp_path, torch_home):
    bad = tmp_path / "resnet18-f37072fd.pth"
    bad.write_bytes(b"junk")
    out = CliRunner().invoke(command, ["import", str(bad)])
    assert out.exit_code == 1 and "wrong hash" in out.output


def test_import_then_status_ok(tmp_path, torch_home, monkeypatch, settings):
    good = tmp_path / "w.pth"
    good.write_bytes(b"pretend weights")
    monkeypatch.setattr(weights, "WEIGHTS_SHA256_PREFIX", sha256_file(good)[:8])
    out = CliRunner().invoke(command, ["import", str(good)])
    assert out.exit_code == 0, out.output
    assert (torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth").exists()
    status = CliRunner().invoke(command, ["status"])
    assert ": ok" in status.output


def test_help_has_example():
    assert "Example:" in CliRunner().invoke(command, ["--help"]).output
