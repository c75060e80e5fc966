"""Checkpoints: read safely, without Lightning, in today's layout; those of release 0.1.0 still load."""

import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from helpers.models import as_release_0_1_0, tiny_model
from helpers.paths import REPO
from helpers.unsafe import write_code_pickle

from project.common.errors import UserError
from project.config.recipes import DEFAULT, NOTEBOOK
from project.lit_classifier_main import LitClassifier
from project.models.checkpoint import load_trained_net, read_checkpoint


def save(model, path: Path, temperature: float = 0.8) -> Path:
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.strategy.connect(model)
    model.temperature = temperature
    trainer.save_checkpoint(path)
    return path


@pytest.mark.parametrize("recipe", [NOTEBOOK, DEFAULT], ids=["one head", "three heads"])
def test_checkpoints_of_release_0_1_0_load_and_predict_the_same(tmp_path, recipe):
    model = tiny_model(recipe).eval()
    old = as_release_0_1_0(save(model, tmp_path / "new.ckpt"), tmp_path / "old.ckpt")
    assert any(key.startswith("head.") for key in torch.load(old, weights_only=True)["state_dict"])
    images = torch.randn(2, 3, 32, 32)
    for path in (tmp_path / "new.ckpt", old):
        restored = LitClassifier.load_from_checkpoint(path).eval()
        assert restored.net.settings == model.net.settings and restored.temperature == 0.8
        assert restored.optimizer_settings == model.optimizer_settings
        with torch.no_grad():
            assert torch.equal(restored(images), model(images))


def test_inference_needs_neither_lightning_nor_a_weights_source(tmp_path):
    path = save(tiny_model(DEFAULT), tmp_path / "model.ckpt")
    script = (f"import sys, torch; from project.models.checkpoint import load_trained_net; "
              f"trained = load_trained_net({str(path)!r}); torch.hub.load_state_dict_from_url = None; "
              f"print(trained.calibrated_logits(torch.zeros(1, 3, 32, 32)).shape, trained.temperature, "
              f"'pytorch_lightning' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["torch.Size([1,", "5])", "0.8", "False"]


def test_a_loaded_net_is_the_trained_one_and_owns_its_weights(tmp_path):
    model = tiny_model(DEFAULT).eval()
    path = save(model, tmp_path / "model.ckpt")
    trained = load_trained_net(path)  # built on the meta device, weights assigned from the checkpoint
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(images)
        assert torch.equal(trained.calibrated_logits(images), expected)
        path.write_bytes(b"\0" * path.stat().st_size)  # the file rewritten in place (a run saving last.ckpt again)
        assert torch.equal(trained.calibrated_logits(images), expected)


def test_unsafe_or_broken_checkpoints_are_one_line_errors(tmp_path):
    target = tmp_path / "created_by_pickle.txt"
    evil = tmp_path / "evil.ckpt"
    write_code_pickle(evil, "state_dict", target)
    good = save(tiny_model(NOTEBOOK), tmp_path / "good.ckpt")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[:5000])
    not_ours = tmp_path / "weights.pth"
    torch.save({"0.weight": torch.zeros(1)}, not_ours)
    for path in (evil, truncated, not_ours):
        with pytest.raises(UserError, match="cannot load checkpoint .* safely"):
            read_checkpoint(path)
    assert not target.exists()
    with pytest.raises(UserError, match="does not exist"):
        load_trained_net(tmp_path / "missing.ckpt")
