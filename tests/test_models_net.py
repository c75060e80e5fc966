"""AgeNet: explicit entry points for images, views and features; mirror averaging; heads averaged; sizes."""

import pytest
import torch
from helpers.models import tiny_net

from project.config.recipes import DEFAULT, NOTEBOOK
from project.core.transforms import mirror


@pytest.mark.parametrize("recipe", [NOTEBOOK, DEFAULT], ids=["notebook", "default"])
def test_images_views_and_features_give_the_same_logits(recipe):
    net = tiny_net(recipe).eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits = net(images)
        views = net.views(images)
        assert views.shape == (3, recipe.net.input.views, 3, 32, 32)
        assert torch.equal(net.forward_views(views), logits)
        assert torch.equal(net.forward_features(net.encode_views(views)), logits)
    assert logits.shape == (3, 5)


def test_the_default_network_averages_a_face_and_its_mirror_image():
    net = tiny_net(DEFAULT).eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        both = net(images)
        original = net.forward_views(images.unsqueeze(1))
        mirrored = net.forward_views(mirror(images).unsqueeze(1))
    expected = (original.softmax(dim=1) + mirrored.softmax(dim=1)) / 2
    assert torch.allclose(both.softmax(dim=1), expected, atol=1e-6)
    assert torch.allclose(both.exp().sum(dim=1), torch.ones(3), atol=1e-5)  # group log-probabilities


@pytest.mark.parametrize("target", ["age", "group"])
def test_an_ensemble_predicts_the_mean_probability_of_its_heads(target):
    ensemble = tiny_net(DEFAULT, target=target, ensemble_size=3).eval()
    singles = []
    for head in ensemble.heads:
        single = tiny_net(DEFAULT, target=target, ensemble_size=1).eval()  # the same random backbone
        single.heads[0].load_state_dict(head.state_dict())
        singles.append(single)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        together = ensemble(images).softmax(dim=1)
        alone = torch.stack([single(images).softmax(dim=1) for single in singles])
    assert not torch.allclose(alone[0], alone[1], atol=1e-4)  # the heads start from different weights
    assert torch.allclose(together, alone.mean(dim=0), atol=1e-5)


def test_per_year_outputs_become_group_log_probabilities():
    net = tiny_net(DEFAULT, ensemble_size=1)
    outputs = torch.randn(4, 1, 125)
    expected = outputs[:, 0].softmax(dim=1).view(4, 5, 25).sum(dim=2)
    assert torch.allclose(net.member_group_logits(outputs)[:, 0].exp(), expected, atol=1e-6)


def test_recipe_heads_have_the_documented_sizes():
    def head_params(recipe):
        return sum(p.numel() for p in tiny_net(recipe, image_size=224).heads.parameters())

    assert head_params(NOTEBOOK) == 25_346_541  # the Keras notebook's head
    assert head_params(DEFAULT) == DEFAULT.net.ensemble_size * 1_704_253  # each compact head ~15x smaller


def test_the_notebook_head_follows_the_image_size_and_only_its_hidden_kernels_decay():
    net = tiny_net(NOTEBOOK)
    head = net.heads[0]
    assert head.layers[1].in_features == 512
    assert [id(p) for p in net.regularized_weights()] == [id(head.layers[1].weight), id(head.layers[4].weight)]
