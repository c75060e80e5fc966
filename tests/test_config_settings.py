"""Settings and recipes: one home per value, checked choices, plain-dict round trips, and the flags on top."""

from dataclasses import replace

import pytest
from helpers.config import settings_for

from project.config.recipes import DEFAULT, NOTEBOOK, RECIPES
from project.config.settings import InputSettings, NetSettings, OptimizerSettings


@pytest.mark.parametrize("recipe", list(RECIPES.values()), ids=list(RECIPES))
def test_network_and_optimizer_settings_survive_a_plain_dict_round_trip(recipe):
    record = recipe.net.to_dict()
    assert isinstance(record["hidden_sizes"], list) and isinstance(record["input"], dict)  # plain types only
    assert NetSettings.from_dict(record) == recipe.net
    assert OptimizerSettings.from_dict(recipe.optimizer.to_dict()) == recipe.optimizer


def test_photo_views_survive_the_round_trip_and_are_left_out_when_off():
    """Left out when off, so a checkpoint without photo views loads in a release that does not know them."""
    assert "photo_views" not in DEFAULT.net.to_dict()["input"]
    with_photos = replace(DEFAULT.net, input=replace(DEFAULT.net.input, photo_views=True))
    assert with_photos.to_dict()["input"]["photo_views"] is True
    assert NetSettings.from_dict(with_photos.to_dict()) == with_photos


@pytest.mark.parametrize("make", [
    lambda: InputSettings(image_size=224, feature_layer="block3", mirror=False),
    lambda: InputSettings(image_size=224, feature_layer="block5", mirror=False, photo_views=True),
    lambda: replace(NOTEBOOK.net, head="pooled"),
    lambda: replace(NOTEBOOK.net, target="years"),
    lambda: replace(NOTEBOOK.net, ensemble_size=0),
    lambda: replace(NOTEBOOK.optimizer, name="sgd"),
    lambda: replace(NOTEBOOK.optimizer, schedule="cosine"),
])
def test_unknown_choices_are_refused(make):
    with pytest.raises(ValueError):
        make()


def test_flags_override_the_recipe_and_the_rest_comes_from_it(flags):
    settings = settings_for(flags + ["--recipe", "notebook", "--lr", "5e-4"])
    assert settings.optimizer == replace(NOTEBOOK.optimizer, lr=5e-4)
    assert settings.net == replace(NOTEBOOK.net, input=replace(NOTEBOOK.net.input, image_size=32))
    assert (settings.trainer.max_epochs, settings.trainer.patience) == (NOTEBOOK.max_epochs, NOTEBOOK.patience)
    assert settings.data.batch_size == 8 and settings.objective == NOTEBOOK.objective
    default = settings_for(flags)
    assert default.recipe == "default" and default.net.input.mirror and default.trainer.patience is None
    assert default.optimizer == DEFAULT.optimizer and default.net.ensemble_size == DEFAULT.net.ensemble_size


def test_the_record_names_every_setting_by_its_flag(flags):
    record = settings_for(flags + ["--max_epochs", "3"]).record()
    assert record["recipe"] == "default" and record["image_size"] == 32 and record["max_epochs"] == 3
    assert record["patience"] is None and record["no_feature_cache"] is False and record["precision"] == "32-true"
    assert record["lr"] == DEFAULT.optimizer.lr and record["resume_from"] is None
    assert record["photo_views"] is False and settings_for(flags + ["--photo_views"]).record()["photo_views"] is True
