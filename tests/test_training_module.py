"""LitClassifier: what it optimises, how it steps on images or cached features, and calibration."""

import pytorch_lightning as pl
import torch
from helpers.models import tiny_model

from project.config.recipes import DEFAULT, NOTEBOOK


def features_batch(model, images, groups, ages):
    with torch.no_grad():
        return {"features": model.net.encode_views(model.net.views(images)), "group": groups, "age": ages}


def test_a_batch_of_images_and_one_of_cached_features_step_alike():
    model = tiny_model(DEFAULT).eval()
    images, groups, ages = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]), torch.tensor([3, 30, 60, 80])
    with torch.no_grad():
        from_images = model.model_step({"images": model.net.views(images), "group": groups, "age": ages})
        from_features = model.model_step(features_batch(model, images, groups, ages))
    assert torch.allclose(from_images.logits, from_features.logits, atol=1e-5)
    assert from_images.views == from_features.views == 2 and from_images.outputs.shape == (8, 3, 125)


def test_weight_decay_only_on_kernels_and_never_on_the_frozen_backbone():
    model = tiny_model(NOTEBOOK)
    decayed, plain = model.configure_optimizers().param_groups
    assert decayed["weight_decay"] == NOTEBOOK.optimizer.weight_decay and plain["weight_decay"] == 0.0
    head = model.net.heads[0]
    assert [id(p) for p in decayed["params"]] == [id(head.layers[1].weight), id(head.layers[4].weight)]
    plain_ids = {id(p) for p in plain["params"]}
    assert {id(head.layers[-1].weight), id(head.layers[-1].bias), id(head.layers[1].bias)} <= plain_ids
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for group in (decayed, plain) for p in group["params"]} == trainable


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


def test_each_head_of_an_ensemble_learns_alone():
    ensemble = tiny_model(DEFAULT).eval()
    singles = []
    for head in ensemble.net.heads:
        single = tiny_model(DEFAULT, ensemble_size=1).eval()
        single.net.heads[0].load_state_dict(head.state_dict())
        singles.append(single)
    features = torch.randn(6, 1, 512, 1, 1)
    batch = {"features": features, "group": torch.tensor([0, 1, 2, 3, 1, 0]),
             "age": torch.tensor([3, 30, 60, 80, 45, 20])}
    objective = ensemble.training_objective(ensemble.model_step(batch), batch["age"])
    alone = [single.training_objective(single.model_step(batch), batch["age"]) for single in singles]
    assert torch.allclose(objective, torch.stack(alone).mean(), atol=1e-5)  # the mean of the heads' own losses
    objective.backward()
    for single, head in zip(singles, ensemble.net.heads):
        single.training_objective(single.model_step(batch), batch["age"]).backward()
        for ours, theirs in zip(head.parameters(), single.net.heads.parameters()):
            assert torch.allclose(ours.grad * len(singles), theirs.grad, atol=1e-5)  # no head sees another's loss


def test_temperature_scales_test_and_prediction_but_not_validation():
    model = tiny_model(DEFAULT).eval()
    images = torch.randn(4, 3, 32, 32)
    batch = features_batch(model, images, torch.tensor([0, 1, 2, 3]), torch.tensor([3, 30, 60, 80]))
    with torch.no_grad():
        raw = model.model_step(batch).logits
        model.temperature = 0.5
        assert torch.equal(model.model_step(batch).logits, raw)  # validation fits the temperature on raw logits
        calibrated = model.model_step(batch, calibrated=True).logits
        assert torch.allclose(calibrated, raw / 0.5)
        assert torch.allclose(model(images), raw / 0.5, atol=1e-5)
        assert torch.allclose(model.predict_step(images, 0), torch.softmax(raw / 0.5, dim=1), atol=1e-5)
    assert torch.equal(calibrated.argmax(dim=1), raw.argmax(dim=1))  # never changes a prediction


def test_the_checkpoint_carries_the_settings_as_plain_values(tmp_path):
    model = tiny_model(DEFAULT)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    checkpoint = torch.load(tmp_path / "model.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["net"] == model.net.settings.to_dict()
    assert checkpoint["temperature"] == 1.0 and all(key.startswith("net.") for key in checkpoint["state_dict"])
