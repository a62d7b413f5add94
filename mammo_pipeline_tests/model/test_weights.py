from __future__ import annotations

import dataclasses

import pytest
import torch
from torchvision.models import resnet18

from mammo_pipeline.model import weights
from mammo_pipeline.model.train import train_model
from mammo_pipeline.model.weights import (
    PretrainedWeightsError,
    build_network,
    check_file,
    find_weights,
    import_weights,
    load_imagenet_state,
    sha256_file,
)
from mammo_pipeline.synth.toy_labels import make_labels
from mammo_pipeline_tests.model.conftest import MINI


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


@pytest.fixture
def fake_weights(tmp_path, monkeypatch):
    """A real resnet18 state dict (random init) whose sha256 prefix we declare to be the expected one."""
    torch.manual_seed(1)
    path = tmp_path / "resnet18-fake.pth"
    torch.save(resnet18(weights=None).state_dict(), path)
    monkeypatch.setattr(weights, "WEIGHTS_SHA256_PREFIX", sha256_file(path)[:8])
    return path


def test_refusal_message_says_how_to_fix(settings, torch_home):
    s = dataclasses.replace(settings, pretrained="imagenet")
    with pytest.raises(PretrainedWeightsError) as err:
        load_imagenet_state(s)
    msg = str(err.value)
    for needle in ("resnet18-f37072fd.pth", "f37072fd", "MAMMO_PRETRAINED_WEIGHTS", "mammo weights import"):
        assert needle in msg
    assert "MAMMO_PRETRAINED=none" in msg and str(torch_home) in msg


def test_training_refuses_without_weights_and_writes_nothing(settings, torch_home):
    labels = make_labels(settings, n=8)
    with pytest.raises(PretrainedWeightsError, match="MAMMO_PRETRAINED=none"):
        train_model(
            dataclasses.replace(settings, pretrained="imagenet"), labels, dataclasses.replace(MINI, pretrained=None)
        )
    assert not (settings.models / "current.json").exists()


def test_wrong_hash_is_refused(settings, tmp_path, torch_home):
    bad = tmp_path / "resnet18-f37072fd.pth"
    bad.write_bytes(b"not the weights")
    assert check_file(bad).startswith("wrong hash")
    with pytest.raises(PretrainedWeightsError, match="wrong hash"):
        import_weights(bad)
    s = dataclasses.replace(settings, pretrained="imagenet", pretrained_weights=str(bad))
    with pytest.raises(PretrainedWeightsError, match="wrong hash"):
        find_weights(s)
    assert not (torch_home / "hub" / "checkpoints").exists()


def test_env_var_file_is_found_first(settings, fake_weights, torch_home):
    s = dataclasses.replace(settings, pretrained="imagenet", pretrained_weights=str(fake_weights))
    assert find_weights(s) == fake_weights


def test_import_installs_into_torch_cache_and_is_found(settings, fake_weights, torch_home):
    target = import_weights(fake_weights)
    assert target == torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert target.read_bytes() == fake_weights.read_bytes()
    s = dataclasses.replace(settings, pretrained="imagenet")
    assert find_weights(s) == target


def test_imagenet_state_is_loaded_into_the_body(settings, fake_weights, torch_home):
    s = dataclasses.replace(settings, pretrained="imagenet", pretrained_weights=str(fake_weights))
    state, source = load_imagenet_state(s)
    assert source == str(fake_weights)
    net = build_network(state)
    torch.testing.assert_close(net[0][0].weight, state["conv1.weight"])  # body[0] is conv1
    torch.testing.assert_close(net[0][7][1].conv2.weight, state["layer4.1.conv2.weight"])
    assert not torch.equal(build_network()[0][0].weight, state["conv1.weight"])


def test_pretrained_none_needs_no_file(settings, torch_home):
    assert load_imagenet_state(settings) == (None, "none")


def test_training_with_imagenet_weights_fine_tunes_and_records_the_source(settings, fake_weights, torch_home):
    s = dataclasses.replace(settings, pretrained="imagenet", pretrained_weights=str(fake_weights))
    result = train_model(s, make_labels(s, n=16), dataclasses.replace(MINI, pretrained=None))
    assert result.ref.pretrained and result.row["pretrained"] == "imagenet"
    assert result.row["pretrained_source"] == str(fake_weights)
    assert result.row["hyperparameters"]["freeze_epochs"] == 1


@pytest.mark.parametrize("content", [b"", b"\x80\x02not a pickle", bytes(range(256)) * 4])
def test_a_damaged_weights_file_is_named_in_one_line_without_torchs_unsafe_advice(tmp_path, content):
    """A user's report: `mammo explain` over a damaged model.pth printed torch's traceback, ending in the advice to
    load it with weights_only=False (which would run whatever the file holds). It is an OSError the CLI prints in
    one line, naming the file and a safe way out."""
    from mammo_pipeline.model.weights import UnreadableWeights, read_weights

    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(UnreadableWeights, match=r"model\.pth: not readable as a saved network") as info:
        read_weights(path)
    assert isinstance(info.value, OSError) and "weights_only" not in str(info.value)
