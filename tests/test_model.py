"""LitClassifier: the notebook's architecture, freezing, weight-decay groups, weight sources, checkpoints."""

import pickle
from pathlib import Path

import pytest
import torch
from torchvision.models import vgg16

from project.errors import UserError
from project.lit_classifier_main import LitClassifier
from project.models.backbone import BACKBONE_PARAMS, build_backbone


def count(params):
    return sum(p.numel() for p in params)


def test_notebook_parameter_counts_at_224():
    model = LitClassifier(image_size=224, backbone_weights="none")
    frozen = [p for p in model.parameters() if not p.requires_grad]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert count(frozen) == BACKBONE_PARAMS == 14_714_688
    assert count(trainable) == 25_346_541
    assert all(p.requires_grad for p in model.head.parameters())


def test_head_follows_image_size():
    model = LitClassifier(image_size=32, backbone_weights="none")
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 5)
    assert model.head.layers[1].in_features == 512


def test_backbone_stays_frozen_and_in_eval_mode():
    model = LitClassifier(image_size=32, backbone_weights="none")
    model.train()
    assert not model.backbone.training and not any(m.training for m in model.backbone.modules())
    assert model.head.training


def test_weight_decay_only_on_hidden_kernels():
    model = LitClassifier(image_size=32, backbone_weights="none", weight_decay=0.002)
    optimizer = model.configure_optimizers()
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.002 and plain["weight_decay"] == 0.0
    hidden = [model.head.layers[1].weight, model.head.layers[4].weight]
    assert [id(p) for p in decayed["params"]] == [id(p) for p in hidden]
    plain_ids = {id(p) for p in plain["params"]}
    output = model.head.layers[-1]
    assert id(output.weight) in plain_ids and id(output.bias) in plain_ids
    assert id(model.head.layers[1].bias) in plain_ids
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == trainable  # no frozen params


def test_adam_weight_decay_equals_keras_l2_penalty():
    """Adam(weight_decay=2λ) and a loss with λ·Σw² take the same step (the notebook's l2(0.001))."""
    torch.manual_seed(0)
    w1 = torch.nn.Parameter(torch.randn(4, 3))
    w2 = torch.nn.Parameter(w1.detach().clone())
    x = torch.randn(5, 3)
    opt1 = torch.optim.Adam([w1], lr=1e-3, weight_decay=0.002)
    opt2 = torch.optim.Adam([w2], lr=1e-3)
    for _ in range(3):
        opt1.zero_grad(), opt2.zero_grad()
        (x @ w1.T).pow(2).mean().backward()
        ((x @ w2.T).pow(2).mean() + 0.001 * w2.pow(2).sum()).backward()
        opt1.step(), opt2.step()
    assert torch.allclose(w1, w2, atol=1e-7)


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
        build_backbone(str(path))


def test_wrong_shapes_are_refused(tmp_path):
    state = vgg16(weights=None).features.state_dict()
    state["0.weight"] = torch.zeros(64, 1, 3, 3)
    path = tmp_path / "shapes.pth"
    torch.save(state, path)
    with pytest.raises(UserError, match="0.weight has shape"):
        build_backbone(str(path))


class _CreatesAFile:
    """Unpickling this would create a file: a weights file must never run it."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (Path(self.target), "pwned"))


def test_pickle_with_code_never_runs(tmp_path):
    target = tmp_path / "created_by_pickle.txt"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"0.weight": _CreatesAFile(str(target))}, handle)
    with pytest.raises(UserError, match="refusing to load"):
        build_backbone(str(path))
    assert not target.exists()


def test_missing_weights_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        build_backbone(str(tmp_path / "nope.pth"))


def test_imagenet_weights_offline_give_a_one_line_hint(monkeypatch, tmp_path):
    import urllib.error

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(UserError, match="--backbone_weights PATH"):
        build_backbone("imagenet")


def test_load_from_checkpoint_needs_no_weights_source(tmp_path, monkeypatch):
    import pytorch_lightning as pl

    weights = tmp_path / "features.pth"
    torch.save(vgg16(weights=None).features.state_dict(), weights)
    model = LitClassifier(image_size=32, backbone_weights=str(weights))
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.strategy.connect(model)
    ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    weights.unlink()  # the checkpoint alone must be enough

    def no_download(*args, **kwargs):
        raise AssertionError("load_from_checkpoint must not fetch weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    restored = LitClassifier.load_from_checkpoint(ckpt)
    assert restored.hparams.backbone_weights == str(weights)
    x = torch.randn(2, 3, 32, 32)
    model.eval(), restored.eval()
    assert torch.equal(model(x), restored(x))
