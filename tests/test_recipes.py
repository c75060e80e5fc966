"""Recipes and what the default recipe adds: per-year age targets, mirror averaging, block-4 features."""

import argparse
import dataclasses
import json
import math

import pytest
import torch

from project.age_groups import AGE_BINS, age_distribution, group_log_probs
from project.cli import CONFIG_FILE_NAME, apply_recipe, main
from project.lit_classifier_main import LitClassifier
from project.models.backbone import build_backbone
from project.recipes import DEFAULT, NOTEBOOK, RECIPES


def test_group_probabilities_are_sums_over_their_years():
    logits = torch.randn(4, AGE_BINS)
    expected = logits.softmax(dim=1).view(4, 5, 25).sum(dim=2)
    assert torch.allclose(group_log_probs(logits).exp(), expected, atol=1e-6)


def test_age_targets_peak_at_the_age_and_sum_to_one():
    targets = age_distribution(torch.tensor([0, 24, 60, 124]), sigma=3.0)
    assert torch.allclose(targets.sum(dim=1), torch.ones(4))
    assert targets.argmax(dim=1).tolist() == [0, 24, 60, 124]
    # a 24-year-old's target leaks into 25-49 (the neighbouring years), a 60-year-old's does not reach 0-24
    assert targets[1, 25:50].sum() > 0.2 and targets[2, :25].sum() < 1e-6


def test_block4_cut_keeps_the_feature_shape():
    torch.manual_seed(0)
    block4, block5 = build_backbone("none", "block4"), build_backbone("none", "block5")
    images = torch.randn(2, 3, 64, 64)
    assert block4(images).shape == block5(images).shape == (2, 512, 2, 2)
    with pytest.raises(ValueError, match="unknown feature layer"):
        build_backbone("none", "block3")


def test_default_model_averages_a_face_and_its_mirror_image():
    torch.manual_seed(0)
    model = LitClassifier(image_size=32, backbone_weights="none", **DEFAULT.model_kwargs()).eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        both = model(images)
        original, mirrored = model._group_logits(images), model._group_logits(images.flip(-1))
    assert both.shape == (3, 5)
    expected = (original.softmax(dim=1) + mirrored.softmax(dim=1)) / 2
    assert torch.allclose(both.softmax(dim=1), expected, atol=1e-6)
    assert torch.allclose(both.exp().sum(dim=1), torch.ones(3), atol=1e-5)  # group log-probabilities
    with torch.no_grad():  # prediction (predict_step, predict.py) goes the same way
        assert torch.allclose(model.predict_step(images, 0), expected, atol=1e-6)


def test_recipe_heads_have_the_documented_sizes():
    def head_params(recipe):
        model = LitClassifier(image_size=224, backbone_weights="none", **recipe.model_kwargs())
        return sum(p.numel() for p in model.head.parameters())

    assert head_params(NOTEBOOK) == 25_346_541  # the Keras notebook's head
    assert head_params(DEFAULT) == DEFAULT.ensemble_size * 1_704_253  # each compact head ~15x smaller


def _ensemble_and_its_members(**overrides):
    """A 3-head default model and, for each member, a single-head model holding that member's weights."""
    kwargs = {**DEFAULT.model_kwargs(), "ensemble_size": 3, **overrides}
    torch.manual_seed(0)
    ensemble = LitClassifier(image_size=32, backbone_weights="none", **kwargs).eval()
    singles = []
    for member in ensemble.head.members:
        single = LitClassifier(image_size=32, backbone_weights="none", **{**kwargs, "ensemble_size": 1}).eval()
        single.backbone.load_state_dict(ensemble.backbone.state_dict())
        single.head.load_state_dict(member.state_dict())
        singles.append(single)
    return ensemble, singles


@pytest.mark.parametrize("target", ["age", "group"])
def test_an_ensemble_predicts_the_mean_probability_of_its_heads(target):
    ensemble, singles = _ensemble_and_its_members(target=target)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        together = ensemble.predict_step(images, 0)
        alone = torch.stack([single.predict_step(images, 0) for single in singles])
    assert not torch.allclose(alone[0], alone[1], atol=1e-4)  # the heads start from different weights
    assert torch.allclose(together, alone.mean(dim=0), atol=1e-5)


def test_each_head_of_an_ensemble_learns_alone():
    ensemble, singles = _ensemble_and_its_members()
    features = torch.randn(6, 512, 1, 1)
    targets, ages = torch.tensor([0, 1, 2, 3, 1, 0]), torch.tensor([3, 30, 60, 80, 45, 20])
    objective = ensemble._objective(ensemble._outputs(features), targets, ages)
    alone = [single._objective(single._outputs(features), targets, ages) for single in singles]
    assert torch.allclose(objective, torch.stack(alone).mean(), atol=1e-5)  # the mean of the heads' own losses
    objective.backward()
    for single, member in zip(singles, ensemble.head.members):
        single._objective(single._outputs(features), targets, ages).backward()
        for ours, theirs in zip(member.parameters(), single.head.parameters()):
            assert torch.allclose(ours.grad * len(singles), theirs.grad, atol=1e-5)  # no head sees another's loss


def test_default_recipe_trains_with_adamw_and_a_one_cycle_schedule(cli_args, tmp_path):
    assert main(cli_args["base"] + ["--max_epochs", "2"]) == 0
    run = tmp_path / "runs" / "lightning_logs" / "version_0"
    config = json.loads((run / CONFIG_FILE_NAME).read_text())
    assert config["recipe"] == "default" and config["patience"] is None and config["lr"] == DEFAULT.lr
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    assert (hparams["head"], hparams["target"], hparams["feature_layer"], hparams["mirror"]) == (
        "compact", "age", "block4", True)
    assert hparams["ensemble_size"] == DEFAULT.ensemble_size > 1
    restored = LitClassifier.load_from_checkpoint(run / "checkpoints" / "last.ckpt")
    assert len(restored.head.members) == DEFAULT.ensemble_size
    assert checkpoint["lr_schedulers"][0]["total_steps"] == 2 * math.ceil(50 / 8)
    caches = sorted(json.loads(p.read_text())["mirrored"] for p in (tmp_path / "cache" / "features").glob("*.json"))
    assert caches == [False, True]  # the faces and their mirror images


def test_notebook_recipe_is_the_notebook(cli_args, tmp_path):
    assert main(cli_args["base"] + ["--recipe", "notebook", "--max_epochs", "1", "--lr", "5e-4"]) == 0
    run = tmp_path / "runs" / "lightning_logs" / "version_0"
    config = json.loads((run / CONFIG_FILE_NAME).read_text())
    assert config["recipe"] == "notebook" and config["patience"] == 5 and config["lr"] == 5e-4
    hparams = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]
    assert (hparams["head"], hparams["target"], hparams["feature_layer"], hparams["mirror"]) == (
        "notebook", "group", "block5", False)
    assert hparams["lr"] == 5e-4


def test_a_run_started_with_one_head_resumes_with_one_head(cli_args, tmp_path, monkeypatch):
    """A run interrupted under an earlier release (one head) continues after an upgrade (three heads)."""
    monkeypatch.setitem(RECIPES, "default", dataclasses.replace(DEFAULT, ensemble_size=1, calibrate=False))
    assert main(cli_args["base"] + ["--max_epochs", "2"]) == 0
    run = tmp_path / "runs" / "lightning_logs" / "version_0"
    (run / "test_metrics.json").unlink()
    monkeypatch.setitem(RECIPES, "default", DEFAULT)
    assert main(cli_args["base"] + ["--max_epochs", "2", "--resume"]) == 0  # restores the one-head weights
    assert json.loads((run / "test_metrics.json").read_text())["temperature"] == 1.0
    hparams = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]
    assert hparams["ensemble_size"] == 1 and not hparams["calibrate"]


def test_resuming_a_one_cycle_run_for_more_epochs_is_refused_in_one_line(cli_args, tmp_path, capsys):
    assert main(cli_args["base"] + ["--max_epochs", "1"]) == 0
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args["base"] + ["--max_epochs", "3", "--resume"])
    assert exit_info.value.code == 2
    assert "planned for 1 epochs; resume with --max_epochs 1" in capsys.readouterr().err


@pytest.mark.parametrize("saved, expected", [({"recipe": "notebook"}, "notebook"), ({}, "notebook"), (None, "default")])
def test_resume_keeps_the_recipe_the_run_started_with(tmp_path, saved, expected):
    checkpoint = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    if saved is not None:  # {} is a run from before recipes existed: those were the notebook's
        (checkpoint.parent.parent / CONFIG_FILE_NAME).write_text(json.dumps(saved))
    args = argparse.Namespace(recipe=None, resume=True, resume_from=checkpoint, lr=None, weight_decay=None,
                              batch_size=None, max_epochs=None, patience=None)
    apply_recipe(args)
    assert args.recipe == expected and args.batch_size == RECIPES[expected].batch_size
