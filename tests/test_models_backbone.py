"""The frozen VGG16 conv base: its size, its cut, freezing, and where its weights may safely come from."""

import urllib.error

import pytest
import torch
from helpers.models import random_backbone
from helpers.unsafe import write_code_pickle
from torchvision.models import vgg16

from project.common.errors import UserError
from project.models.backbone import (
    FrozenVGG16Features,
    build_backbone,
    load_backbone_state_dict,
)


def test_the_conv_base_is_vgg16s_frozen_and_in_eval_mode():
    backbone = random_backbone()
    assert sum(p.numel() for p in backbone.parameters()) == 14_714_688  # VGG16's conv base
    assert not any(p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert not backbone.training and not any(m.training for m in backbone.modules())


def test_block4_cut_keeps_the_feature_shape():
    block4, block5 = random_backbone("block4"), random_backbone("block5")
    images = torch.randn(2, 3, 64, 64)
    assert block4(images).shape == block5(images).shape == (2, 512, 2, 2) == (2, *block4.feature_shape(64))
    with pytest.raises(ValueError, match="unknown feature layer"):
        FrozenVGG16Features("block3")


def test_weights_from_features_or_whole_vgg16_state_dict(tmp_path):
    reference = vgg16(weights=None)
    whole = tmp_path / "vgg16.pth"
    features = tmp_path / "features.pth"
    torch.save(reference.state_dict(), whole)
    torch.save(reference.features.state_dict(), features)
    for path in (whole, features):
        backbone = build_backbone(str(path))
        assert torch.equal(backbone.layers[0].weight, reference.features[0].weight)


@pytest.mark.parametrize(
    "content, message",
    [
        ({"0.weight": torch.zeros(1)}, "not a VGG16 conv-base state dict"),
        ("just a string", "not a state dict of tensors"),
    ],
)
def test_wrong_weights_are_refused(tmp_path, content, message):
    path = tmp_path / "bad.pth"
    torch.save(content, path)
    with pytest.raises(UserError, match=message):
        load_backbone_state_dict(str(path))


def test_wrong_shapes_are_refused(tmp_path):
    state = vgg16(weights=None).features.state_dict()
    state["0.weight"] = torch.zeros(64, 1, 3, 3)
    path = tmp_path / "shapes.pth"
    torch.save(state, path)
    with pytest.raises(UserError, match="0.weight has shape"):
        load_backbone_state_dict(str(path))


def test_pickle_with_code_never_runs(tmp_path):
    target = tmp_path / "created_by_pickle.txt"
    path = tmp_path / "evil.pth"
    write_code_pickle(path, "0.weight", target)
    with pytest.raises(UserError, match="refusing to load"):
        load_backbone_state_dict(str(path))
    assert not target.exists()


def test_missing_weights_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_backbone_state_dict(str(tmp_path / "nope.pth"))


def test_imagenet_weights_offline_give_a_one_line_hint(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(UserError, match="--backbone_weights PATH"):
        load_backbone_state_dict("imagenet")


def test_the_cache_identity_names_the_weights_and_the_cut():
    block5, block4 = random_backbone("block5"), random_backbone("block4")
    assert set(block5.cache_identity()) == {"backbone"}  # the original configuration: as its first caches had it
    assert block4.cache_identity() == {"backbone": block5.digest(), "layer": "block4"}
