"""Liver networks: the three smp architectures, ImageNet normalisation inside
the model, the loud offline fallback, input-size checks."""
import pytest
import torch

from surgseg_core.errors import ConfigError
from surgseg_core.methods.liver import model as liver_model
from surgseg_core.methods.liver.model import IMAGENET_MEAN, IMAGENET_STD, build_from_config, build_liver_model


@pytest.mark.parametrize("arch", ["unet", "unetplusplus", "deeplabv3plus"])
def test_architectures_give_four_class_logits(arch):
    m = build_liver_model(arch, "resnet18", encoder_weights=None).eval()
    with torch.no_grad():
        out = m(torch.rand(1, 3, 64, 96))
    assert out.shape == (1, 4, 64, 96)


def test_imagenet_normalisation_is_part_of_the_model():
    m = build_liver_model("unet", "resnet18", encoder_weights=None).eval()
    seen = {}
    m.net.register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0].clone()))
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        m(x)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(seen["x"], (x - mean) / std)


def test_offline_weights_fall_back_loudly(monkeypatch, caplog):
    import segmentation_models_pytorch as smp

    real = smp.Unet

    def fake_unet(encoder_weights=None, **kw):
        if encoder_weights is not None:
            raise OSError("no internet")
        return real(encoder_weights=None, **kw)

    monkeypatch.setattr(smp, "Unet", fake_unet)
    with pytest.warns(RuntimeWarning, match="RANDOM weights"):
        m = build_liver_model("unet", "resnet18", encoder_weights="imagenet")
    assert isinstance(m, liver_model.LiverSegmenter)
    assert "RANDOM weights" in caplog.text


def test_bad_configs_are_clear():
    with pytest.raises(ConfigError, match="architecture"):
        build_liver_model("segformer", "resnet18", encoder_weights=None)
    with pytest.raises(ConfigError, match="multiples of 32"):
        build_from_config({"encoder": "resnet18", "encoder_weights": None, "input_width": 208, "input_height": 160})
