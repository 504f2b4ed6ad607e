"""Linear probing before fine-tuning (LP-FT): the head starts as the logistic regression of the
labels on the model's frozen features."""

import pytest
import torch

from edgecls.config import build_config
from edgecls.data import Dataset, ImageSplit
from edgecls.errors import UserError
from edgecls.evaluate.inference import predict_logits
from edgecls.models import create_model
from edgecls.training.linear_probe import fit_linear_head
from edgecls.training.loop import Trainer

# The offline ImageNet weights: features worth probing, even at 32 px.
PRETRAINED = {"model": "mobilenetv2_100", "pretrained": True, "input_size": 32}


def coloured(classes: int, per_class: int = 12, size: int = 32) -> ImageSplit:
    """Noise images whose class is the channel lifted to 255."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 160, (classes * per_class, 3, size, size), generator=generator)
    labels = torch.arange(classes).repeat_interleave(per_class)
    for i, label in enumerate(labels.tolist()):
        images[i, label % 3] = 255
    return ImageSplit(images.to(torch.uint8), labels, [""] * len(labels))


def model_for(classes: int, **settings):
    torch.manual_seed(0)
    config = build_config({**PRETRAINED, **settings})
    return create_model(config, classes).eval()


@pytest.mark.parametrize("classes", [2, 3])
def test_the_probed_head_predicts_what_the_logistic_regression_learnt(classes):
    split = coloured(classes)
    model = model_for(classes)
    before = predict_logits(model, split.images, 64, channels_last=False).argmax(1)
    probe_top1 = fit_linear_head(model, split.images, split.labels, classes, 64, seed=0)
    after = predict_logits(model, split.images, 64, channels_last=False).argmax(1)
    model_top1 = (after == split.labels).float().mean().item()
    assert model_top1 == pytest.approx(probe_top1)  # the model is the probe on its features
    assert model_top1 > (before == split.labels).float().mean().item()
    assert model_top1 >= 0.9


def test_a_class_without_training_images_is_never_predicted():
    split = coloured(2)
    model = model_for(3)
    fit_linear_head(model, split.images, split.labels, 3, 64, seed=0)
    logits = predict_logits(model, split.images, 64, channels_last=False)
    assert (logits.argmax(1) != 2).all()


def test_the_trainer_probes_before_its_first_update_and_needs_a_linear_head():
    split = coloured(3)
    dataset = Dataset("colours", ["r", "g", "b"], split, split, None, [], [], False)
    settings = {**PRETRAINED, "workers": 0}
    plain = Trainer(build_config(settings), dataset)
    probed = Trainer(build_config({**settings, "linear_probe": True}), dataset)
    assert probed.evaluate(split).top1 > plain.evaluate(split).top1
    with pytest.raises(UserError, match="head=linear"):
        Trainer(build_config({**settings, "linear_probe": True, "head": "am_softmax"}), dataset)
