from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mammo_pipeline.model import registry
from mammo_pipeline.model.evaluate import evaluate
from mammo_pipeline.model.ref import ModelRef
from mammo_pipeline.model.train import (
    MAX_EPOCHS,
    PRETRAINED,
    SCRATCH,
    TrainConfig,
    flip_reading,
    load_network,
    positive_weights,
    train_model,
    weights_version,
)
from mammo_pipeline.synth.toy_labels import make_labels
from mammo_pipeline_tests.model.conftest import MINI


def test_trained_model_files_and_version_is_weights_hash(trained):
    s, ref = trained.settings, trained.result.ref
    folder = ref.path(s.models)
    for name in ("model.pth", "meta.json", "audit_predictions.parquet", "oof.parquet"):
        assert (folder / name).exists(), name
    state = torch.load(folder / "model.pth", weights_only=True)
    assert weights_version(state) == ref.model_version and len(ref.model_version) == 12
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["pretrained"] == "none" and meta["hyperparameters"]["size"] == 64
    assert ref.label_snapshot_id == "snap-test" and ref.input_size == 64


def test_model_learns_the_synthetic_flags(trained):
    m = trained.result.metrics
    assert m["n_audit"] == (trained.labels["split"] == "audit").sum() > 0
    assert m["accuracy"] >= 0.5  # chance is 0.25 on four balanced classes


def test_metrics_match_the_saved_audit_predictions(trained):
    s, ref = trained.settings, trained.result.ref
    audit = pd.read_parquet(ref.path(s.models, "audit_predictions.parquet"))
    assert set(audit["sop_instance_uid"]) == set(trained.labels.query("split == 'audit'")["sop_instance_uid"])
    again = evaluate(audit, audit[["p_biopsy", "p_mag"]].to_numpy(), ref.thresholds())
    assert again["accuracy"] == pytest.approx(trained.result.metrics["accuracy"])
    assert again["confusion"] == trained.result.metrics["confusion"]


def test_the_audit_predictions_keep_each_images_patient_and_study(trained):
    """The next model's hold-back check measures both models again on the audit images they share, resampling
    whole patients (promotions.audit_regressions): each row names its patient and study."""
    s, ref = trained.settings, trained.result.ref
    audit = pd.read_parquet(ref.path(s.models, "audit_predictions.parquet")).set_index("sop_instance_uid")
    labels = trained.labels.set_index("sop_instance_uid").loc[audit.index]
    for column in ("patient_key", "study_instance_uid"):
        assert audit[column].tolist() == labels[column].tolist()


def test_the_audit_probabilities_are_the_mean_logit_over_the_four_flips(trained):
    from mammo_pipeline.model.preprocess import preprocess_batch

    s, ref = trained.settings, trained.result.ref
    audit = pd.read_parquet(ref.path(s.models, "audit_predictions.parquet"))
    x = torch.from_numpy(preprocess_batch([s.cache / p for p in audit["model_png"]], ref.input_size))
    net = load_network(s, ref)
    with torch.no_grad():
        readings = [net(x), net(x.flip(-1)), net(x.flip(-2)), net(x.flip(-1).flip(-2))]
        mean = torch.sigmoid(torch.stack(readings).mean(dim=0))[:, 1].numpy()
        assert np.allclose(audit["p_mag"], mean, atol=1e-5)
        assert not np.allclose(audit["p_mag"], torch.sigmoid(readings[0])[:, 1].numpy(), atol=1e-5)
        for flipped in (x.flip(-1), x.flip(-2)):  # the mean over the flips cannot tell a flipped image apart
            assert torch.allclose(flip_reading(net)(flipped), flip_reading(net)(x), atol=1e-5)


def test_oof_probabilities_cover_exactly_the_train_split(trained):
    s, ref = trained.settings, trained.result.ref
    oof = pd.read_parquet(ref.path(s.models, "oof.parquet"))
    train_sops = set(trained.labels.query("split == 'train'")["sop_instance_uid"])
    assert set(oof["sop_instance_uid"]) == train_sops and len(oof) == len(train_sops)
    assert oof["out_of_sample"].all()
    assert oof[["p_biopsy", "p_mag"]].stack().between(0, 1).all()


def test_registry_row_and_current_json(trained):
    s, ref = trained.settings, trained.result.ref
    row = registry.read_row(s, ref.model_version)
    assert row["n_train"] == (trained.labels["split"] == "train").sum()
    assert row["accuracy"] == pytest.approx(trained.result.metrics["accuracy"])
    assert json.loads(row["label_counts"])["audit"]["both"] > 0
    assert json.loads(row["per_hospital_accuracy"]).keys() == {"alpha", "beta"}
    assert row["pretrained"] == "none" and row["train_seconds"] > 0
    assert ModelRef.load(s.models).model_version == ref.model_version
    # each flag's audit figures with their 95 % intervals (model/intervals.py)
    for flag in ("biopsy", "mag"):
        for key in ("roc_auc", "sensitivity", "specificity"):
            low, value, high = (row[f"{flag}_{key}{end}"] for end in ("_low", "", "_high"))
            assert low <= value <= high and high - low > 0, (flag, key)


def test_pictures_are_valid_pngs(trained):
    s = trained.settings
    for path in trained.result.pictures.values():
        for p in (path, s.reports / path.name):
            with Image.open(p) as img:
                img.verify()
                assert img.format == "PNG"


def test_same_seed_same_weights_other_seed_other_weights(tmp_path, settings):
    labels = make_labels(settings, n=16, seed=3)
    versions = []
    for seed, home in ((5, "a"), (5, "b"), (6, "c")):
        s = dataclasses.replace(settings, models=tmp_path / home, warehouse=tmp_path / f"wh{home}")
        versions.append(train_model(s, labels, dataclasses.replace(MINI, seed=seed)).ref.model_version)
    assert versions[0] == versions[1] != versions[2]


def test_training_the_same_model_again_keeps_its_registry_row_created_at(settings):
    """A user's report: re-materializing trained_model on unchanged labels made the same model (same weights,
    same version) and moved its created_at past its own promotion and predictions."""
    labels = make_labels(settings, n=16, seed=3)
    first = train_model(settings, labels, MINI)
    made = registry.read_row(settings, first.ref.model_version)["created_at"]
    again = train_model(settings, labels, MINI)
    assert again.ref.model_version == first.ref.model_version
    assert registry.read_row(settings, again.ref.model_version)["created_at"] == made


def test_no_audit_labels_trains_with_null_metrics(settings):
    labels = make_labels(settings, n=9).assign(split="train")  # 9 = one batch of 8 + a batch of 1 (dropped)
    result = train_model(settings, labels, MINI)
    assert result.metrics["accuracy"] is None and any("no audit" in w for w in result.warnings)
    assert np.isnan(registry.read_row(settings, result.ref.model_version)["accuracy"])


def test_accuracy_by_round_reads_every_registry_row(settings):
    labels = make_labels(settings, n=16)
    train_model(settings, labels.iloc[:12], MINI)
    train_model(settings, labels, MINI)
    reg = registry.read_registry(settings)
    assert sorted(reg["n_train"].tolist()) == sorted([(labels.iloc[:12]["split"] == "train").sum(), 12])


def test_a_model_killed_before_it_is_complete_is_not_listed(settings, monkeypatch):
    """The registry row is written last: a training killed before it saved meta.json and current.json listed a
    model that could not be loaded (before stop 54). The accuracy-by-round picture still shows the new round."""

    def killed(*args: object, **kwargs: object) -> None:
        raise SystemExit("killed while saving")

    labels = make_labels(settings, n=16)
    monkeypatch.setattr(ModelRef, "save", killed)
    with pytest.raises(SystemExit):
        train_model(settings, labels, MINI)
    assert registry.read_registry(settings).empty
    monkeypatch.undo()
    result = train_model(settings, labels, MINI)
    assert registry.read_registry(settings)["model_version"].tolist() == [result.ref.model_version]
    assert ModelRef.load(settings.models).model_version == result.ref.model_version  # current.json, loadable
    assert registry.with_row(settings, result.row)["model_version"].tolist() == [result.ref.model_version]


def test_bad_labels_are_refused(settings):
    labels = make_labels(settings, n=8)
    with pytest.raises(ValueError, match="fewer than 2 labels with split == 'train'"):
        train_model(settings, labels.assign(split="audit"), MINI)
    with pytest.raises(ValueError, match="lacks columns"):
        train_model(settings, labels.drop(columns=["model_png"]), MINI)
    (settings.cache / labels["model_png"].iloc[0]).unlink()
    with pytest.raises(FileNotFoundError, match="1 model PNGs missing"):
        train_model(settings, labels, MINI)


def test_unset_fields_take_the_defaults_of_the_path():
    scratch, fine_tune = TrainConfig().resolved(pretrained=False), TrainConfig().resolved(pretrained=True)
    assert scratch == dataclasses.replace(TrainConfig(), **dataclasses.asdict(SCRATCH))
    assert fine_tune == dataclasses.replace(TrainConfig(), **dataclasses.asdict(PRETRAINED))
    assert fine_tune.freeze_epochs >= 1 and scratch.lr > fine_tune.lr
    assert fine_tune.size == scratch.size  # ImageNet weights fine-tune at the size chosen by the learning curves
    mine = TrainConfig(size=48, lr=0.5).resolved(pretrained=False)
    assert (mine.size, mine.lr, mine.batch_size) == (48, 0.5, SCRATCH.batch_size)


def test_epochs_come_from_image_passes_when_zero():
    config = TrainConfig(epochs=0, image_passes=1000)
    assert [config.epochs_for(n) for n in (10, 50, 300, 1000, 5000)] == [MAX_EPOCHS, 20, 4, 1, 1]
    assert TrainConfig(epochs=3, image_passes=1000).epochs_for(50) == 3


def test_positive_weights_favour_the_rarer_flag():
    flags = np.array([[1, 0], [0, 0], [0, 0], [0, 0], [0, 1], [0, 1], [1, 1], [0, 0], [0, 0]], dtype=bool)
    weights = positive_weights(flags)  # biopsy 2 of 9, mag 3 of 9; none of 9 -> 1
    assert weights == pytest.approx([np.sqrt(7 / 2), np.sqrt(6 / 3)])
    assert positive_weights(np.zeros((4, 2), dtype=bool)).tolist() == [1.0, 1.0]
    assert positive_weights(np.ones((4, 2), dtype=bool)).tolist() == [1.0, 1.0]


def test_recorded_hyperparameters_are_the_resolved_ones(trained):
    meta = json.loads(trained.result.ref.path(trained.settings.models, "meta.json").read_text())
    hyper = meta["hyperparameters"]
    assert hyper["epochs"] == 6 and hyper["weight_decay"] == SCRATCH.weight_decay
    assert hyper["flips"] is SCRATCH.flips and hyper["pos_weight"] is SCRATCH.pos_weight
    assert hyper["framings"] is SCRATCH.framings is True and hyper["tones"] is SCRATCH.tones is True


@pytest.mark.parametrize("slow", ["channels_last", "contiguous_format"])
def test_training_runs_in_the_memory_layout_that_is_faster_here_and_the_probe_changes_no_state(slow):
    """The layout is timed, not assumed (oneDNN's channels-last was 2.4x faster on one AVX2 machine and slower on
    another): a network made slow in one layout trains in the other, and the probe leaves weights, BatchNorm
    statistics and gradients as they were."""
    import time

    from mammo_pipeline.model.train import fastest_memory_format

    slow_layout = getattr(torch, slow)

    class Probe(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)

        def forward(self, x):
            if self.conv.weight.is_contiguous(memory_format=slow_layout):
                time.sleep(0.1)  # far above a preempted pass of this tiny net on a busy 2-core machine (0.02 flaked)
            return self.bn(self.conv(x)).mean(dim=(1, 2, 3))

    net = Probe().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    layout, seconds = fastest_memory_format(net, torch.randn(4, 3, 16, 16), torch.device("cpu"))
    faster = torch.contiguous_format if slow == "channels_last" else torch.channels_last
    assert layout == faster
    assert net.conv.weight.is_contiguous(memory_format=faster)
    assert seconds[slow] > seconds[str(faster).removeprefix("torch.")]
    assert net.training and all(p.grad is None for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_the_layout_is_measured_once_per_machine_so_a_busy_machine_cannot_change_the_weights(
    tmp_path, settings, monkeypatch
):
    """The two memory layouts round differently, so the same labels and seed trained another model version when
    the faster layout changed between two trainings, as it did under load (CI of stop 57). The layout is measured
    once per machine and batch shape, kept in the process and beside the models, and reused."""
    from mammo_pipeline.model import train as train_module

    probes = []
    layouts = iter([torch.channels_last, torch.contiguous_format, torch.channels_last, torch.contiguous_format])

    def flipping(model, sample, device):  # a machine whose faster layout changes at every measurement
        layout = next(layouts)
        probes.append(layout)
        model.to(device, memory_format=layout)
        return layout, {"channels_last": 0.1, "contiguous_format": 0.1}

    monkeypatch.setattr(train_module, "fastest_memory_format", flipping)
    monkeypatch.setattr(train_module, "_LAYOUTS", {})
    labels = make_labels(settings, n=16, seed=3)
    versions = [train_model(settings, labels, dataclasses.replace(MINI, seed=5)) for _ in range(2)]
    assert len(probes) == 1 and versions[0].ref.model_version == versions[1].ref.model_version
    monkeypatch.setattr(train_module, "_LAYOUTS", {})  # another process on the same home reads what was measured
    again = train_model(settings, labels, dataclasses.replace(MINI, seed=5))
    assert len(probes) == 1 and again.ref.model_version == versions[0].ref.model_version
    assert json.loads((settings.models / train_module.LAYOUT_RECORD).read_text())  # kept beside the models
