"""The tricks of papers 001-004, each checked for what defines it."""

import dataclasses
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgecls.config import build_config
from edgecls.errors import UserError
from edgecls.training.early_stopping import EarlyStopping, create_early_stopping
from edgecls.training.losses import margin_cross_entropy
from edgecls.training.mixing import MixBatches, create_batch_transform, no_mixing
from edgecls.training.optim import create_optimizer
from edgecls.training.schedules import FormulaSchedule, create_schedule


def test_label_smoothing_is_cross_entropy_against_the_smoothed_distribution():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    labels = torch.tensor([0, 2])
    smoothed = F.one_hot(labels, 3).float() * 0.9 + 0.1 / 3
    expected = -(smoothed * F.log_softmax(logits, dim=1)).sum(1).mean()
    assert margin_cross_entropy(logits, labels, 0.0, 0.1) == pytest.approx(expected.item())
    plain = margin_cross_entropy(logits, labels, 0.0)
    assert plain == pytest.approx(F.cross_entropy(logits, labels).item())


def test_soft_targets_get_the_margin_in_proportion():
    logits = torch.zeros(1, 2)
    soft = torch.tensor([[0.75, 0.25]])
    shifted = torch.tensor([[-0.75, -0.25]])  # margin 1 times the target probabilities
    expected = -(soft * F.log_softmax(shifted, dim=1)).sum()
    assert margin_cross_entropy(logits, soft, 1.0) == pytest.approx(expected.item())


def mixer(**settings):
    return MixBatches(build_config({"max_epochs": 10, **settings}), num_classes=4)


def test_mixup_interpolates_each_image_with_its_mirror_in_the_batch_and_their_labels():
    np.random.seed(0)
    images = torch.rand(4, 1, 8, 8)
    labels = torch.tensor([0, 1, 2, 3])
    mixed, targets = mixer(mixup=0.4)(images.clone(), labels, epoch=0)
    lam = targets[0, 0].item()  # image 0 is mixed with image 3: lam of class 0
    assert 0 < lam < 1
    assert torch.allclose(mixed, lam * images + (1 - lam) * images.flip(0), atol=1e-6)
    expected = lam * F.one_hot(labels, 4) + (1 - lam) * F.one_hot(labels.flip(0), 4)
    assert torch.allclose(targets, expected.float(), atol=1e-6)


def test_cutmix_pastes_a_box_and_labels_by_area():
    np.random.seed(0)
    images = torch.stack([torch.zeros(1, 16, 16), torch.ones(1, 16, 16)])
    mix = mixer(cutmix=1.0)
    pasted_shares = []
    for _ in range(5):  # a draw can give an empty box: look at several
        mixed, targets = mix(images.clone(), torch.tensor([0, 1]), epoch=0)
        pasted = mixed[0].mean().item()  # share of image 0 now covered by image 1's ones
        assert set(mixed[0].unique().tolist()) <= {0.0, 1.0}  # pasted, not blended
        assert targets[0].tolist() == pytest.approx([1 - pasted, pasted, 0.0, 0.0])
        pasted_shares.append(pasted)
    assert any(0 < share < 1 for share in pasted_shares)


def test_mixing_is_switched_off_for_the_first_and_last_epochs_and_odd_batches():
    mix = mixer(mixup=1.0, mix_off_first=2, mix_off_last=3)
    images, labels = torch.rand(4, 1, 8, 8), torch.arange(4)
    for epoch, mixes in [(0, False), (1, False), (2, True), (6, True), (7, False), (9, False)]:
        _, targets = mix(images.clone(), labels, epoch)
        assert targets.is_floating_point() == mixes, epoch
    _, targets = mix(images[:3].clone(), labels[:3], 4)
    assert not targets.is_floating_point()  # an odd batch has no pairs
    assert create_batch_transform(build_config({}), 4) is no_mixing


@pytest.mark.parametrize(
    ("name", "kind", "nesterov"),
    [
        ("sgd", torch.optim.SGD, False),
        ("nesterov", torch.optim.SGD, True),
        ("adam", torch.optim.Adam, None),
        ("adamw", torch.optim.AdamW, None),
        ("nadam", torch.optim.NAdam, None),
        ("rmsprop", torch.optim.RMSprop, None),
        ("adadelta", torch.optim.Adadelta, None),
    ],
)
def test_each_optimizer_name_builds_that_optimizer(name, kind, nesterov):
    model = torch.nn.Linear(3, 2)
    optimizer = create_optimizer([model], build_config({"optimizer": name, "lr": 0.1}))
    assert type(optimizer) is kind
    if nesterov is not None:
        assert optimizer.param_groups[0]["nesterov"] is nesterov


def test_adamw_decays_the_weights_apart_from_the_gradient():
    weight = torch.nn.Parameter(torch.ones(1))
    model = torch.nn.Module()
    model.weight = weight
    config = build_config({"optimizer": "adamw", "lr": 0.1, "weight_decay": 0.6})
    optimizer = create_optimizer([model], config)
    weight.grad = torch.zeros(1)  # no gradient: only the decoupled decay moves the weight
    optimizer.step()
    assert weight.item() == pytest.approx(1 - 0.1 * 0.6)


def lrs(schedule, epochs):
    return [schedule.lr(e) for e in range(epochs)]


def test_formula_schedules_follow_their_formulas_after_warmup():
    step = FormulaSchedule("step", 0.1, 10, warmup_epochs=2, gamma=0.5, step_epochs=3)
    assert lrs(step, 8) == pytest.approx([0.05, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05])
    multi = FormulaSchedule("multistep", 0.1, 10, warmup_epochs=0, gamma=0.1, milestones=[2, 4])
    assert lrs(multi, 5) == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])
    poly = FormulaSchedule("poly", 0.1, 10, warmup_epochs=0, power=2.0)
    assert lrs(poly, 3) == pytest.approx([0.1, 0.1 * 0.9**2, 0.1 * 0.8**2])
    exp = FormulaSchedule("exp", 0.1, 10, warmup_epochs=1, gamma=0.9)
    assert lrs(exp, 3) == pytest.approx([0.1, 0.1, 0.09])
    assert not step.step(8, 1.0, 0.5) and step.step(9, 1.0, 0.5)


def test_multistep_needs_increasing_milestones():
    with pytest.raises(UserError, match="lr_milestones"):
        create_schedule(build_config({"schedule": "multistep", "lr": 0.1}))
    with pytest.raises(UserError, match="increasing"):
        create_schedule(build_config({"schedule": "multistep", "lr": 0.1, "lr_milestones": [5, 3]}))


def test_early_stopping_is_its_own_switch_on_loss_or_top1():
    assert create_early_stopping(build_config({})) is None
    on_loss = EarlyStopping("val_loss", patience=2)
    assert [on_loss.step(loss, 0.5) for loss in [1.0, 0.9, 0.95, 0.91]] == [
        False,
        False,
        False,
        True,
    ]
    on_top1 = EarlyStopping("val_top1", patience=1)
    assert [on_top1.step(1.0, top1) for top1 in [0.5, 0.6, 0.6]] == [False, False, True]
    assert on_top1.best == -0.6 and not math.isinf(on_loss.best)


def test_a_run_with_early_stopping_stops_when_validation_stops_improving():
    from edgecls.data import load_dataset
    from edgecls.training.loop import Trainer

    dataset = load_dataset("digits", input_size=16, grayscale=True, progress=False)
    settings = {"model": "mobilenetv3_small_100", "input_size": 16, "grayscale": True}
    config = build_config(
        {
            **settings,
            "lr": 1e-9,  # nothing is learned: validation top-1 soon stops improving
            "schedule": "constant",
            "max_epochs": 20,
            "early_stopping": "val_top1",
            "early_stopping_patience": 2,
            "workers": 0,
        }
    )
    trainer = Trainer(config, dataset)
    state = trainer.fit()
    assert state.stopped and state.epoch < 20  # the constant schedule alone runs all 20
    assert state.stopped_by == "early_stopping"
    assert trainer.early_stopping.bad_epochs == 2


def test_drop_path_sets_stochastic_depth_in_the_timm_model():
    from timm.layers import DropPath

    from edgecls.models import create_model

    settings = {"model": "mobilenetv3_small_100", "input_size": 32, "drop_path": 0.2}
    model = create_model(build_config(settings), 3)
    rates = [m.drop_prob for m in model.modules() if isinstance(m, DropPath)]
    assert rates and 0.1 < max(rates) <= 0.2  # timm ramps the rate up block by block
    plain = create_model(build_config({**settings, "drop_path": 0.0}), 3)
    assert not any(isinstance(m, DropPath) and m.drop_prob for m in plain.modules())


@pytest.mark.parametrize("direction", ["horizontal", "vertical"])
def test_stitch_mixup_joins_two_images_and_labels_them_by_area(direction):
    np.random.seed(0)
    stitch = create_batch_transform(
        build_config({"stitch_mixup": direction, "stitch_alpha": 1.0}), num_classes=2
    )
    images = torch.stack([torch.zeros(1, 16, 16), torch.ones(1, 16, 16)])
    shares = []
    for _ in range(5):
        stitched, targets = stitch(images.clone(), torch.tensor([0, 1]), epoch=0)
        along = stitched[0, 0, 0] if direction == "horizontal" else stitched[0, 0, :, 0]
        cut = int((along == 0).sum())  # image 0 up to the cut, its partner (ones) after it
        assert torch.equal(along, torch.cat([torch.zeros(cut), torch.ones(16 - cut)]))
        across = (
            stitched[0, 0, :, cut - 1] if direction == "horizontal" else stitched[0, 0, cut - 1]
        )
        assert cut == 0 or (across == 0).all()  # the cut runs straight across the image
        assert torch.allclose(targets[0], torch.tensor([cut / 16, 1 - cut / 16]))
        assert torch.allclose(targets[1], torch.tensor([1 - cut / 16, cut / 16]))
        shares.append(cut / 16)
    assert any(0 < share < 1 for share in shares)


def test_distillation_at_t1_alpha1_is_cross_entropy_on_the_teachers_probabilities():
    from edgecls.models import create_model
    from edgecls.training.losses import build_objective

    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    student = create_model(build_config({"model": "resnet20_cifar", "grayscale": True}), 3)
    images, labels = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
    logits = torch.randn(4, 3)
    teacher_probabilities = F.softmax(teacher(images), dim=1).detach()
    settings = {"teacher": "unused here", "kd_temperature": 1.0, "kd_alpha": 1.0}
    kd = build_objective(build_config(settings), [student], teacher)
    expected = -(teacher_probabilities * F.log_softmax(logits, dim=1)).sum(1).mean()
    assert kd([logits], labels, images).item() == pytest.approx(expected.item(), rel=1e-5)
    # T = 20 (paper 002): T^2 times the same at the softened distributions
    hot = build_objective(build_config({**settings, "kd_temperature": 20.0}), [student], teacher)
    soft = F.softmax(teacher(images) / 20, dim=1).detach()
    expected = -(soft * F.log_softmax(logits / 20, dim=1)).sum(1).mean() * 400
    assert hot([logits], labels, images).item() == pytest.approx(expected.item(), rel=1e-5)
    # alpha = 0: the labels alone
    plain = build_objective(build_config({**settings, "kd_alpha": 0.0}), [student], teacher)
    assert plain([logits], labels, images).item() == pytest.approx(
        F.cross_entropy(logits, labels).item(), rel=1e-5
    )


def test_a_teacher_is_frozen_in_eval_mode_and_never_checkpointed(tmp_path):
    from edgecls import runs
    from edgecls.data import load_dataset
    from edgecls.training.loop import Trainer

    dataset = load_dataset("digits", input_size=16, grayscale=True, progress=False)
    settings = {
        "model": "mobilenetv3_small_050",
        "input_size": 16,
        "grayscale": True,
        "max_epochs": 1,
        "workers": 0,
    }
    teacher_file = tmp_path / "teacher.pt"
    runs.save_checkpoint(Trainer(build_config(settings), dataset).checkpoint(), teacher_file)
    student = Trainer(build_config({**settings, "teacher": str(teacher_file)}), dataset)
    before = [p.clone() for p in student.teacher.parameters()]
    student.fit()
    assert not student.teacher.training
    assert all(torch.equal(a, b) for a, b in zip(before, student.teacher.parameters(), strict=True))
    optimised = {id(p) for group in student.optimizer.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in student.teacher.parameters()}
    checkpoint = student.checkpoint()
    assert checkpoint["partners"] == [] and "teacher" not in checkpoint
    with pytest.raises(UserError, match="other classes"):
        other = load_dataset("digits", input_size=16, grayscale=True, progress=False)
        other.classes = [f"c{i}" for i in range(10)]
        Trainer(build_config({**settings, "teacher": str(teacher_file)}), other)


def test_a_timm_teacher_takes_its_weights_file_and_must_fit_the_classes(tmp_path):
    import timm

    from edgecls.training.losses import load_teacher

    weights = tmp_path / "teacher.pth"
    source = timm.create_model("resnet20_cifar", num_classes=3, in_chans=1)
    torch.save(source.state_dict(), weights)
    settings = {"grayscale": True, "teacher": "resnet20_cifar", "teacher_weights": str(weights)}
    classes = ["a", "b", "c"]
    teacher = load_teacher(build_config(settings), classes, torch.device("cpu"))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    for name, tensor in source.state_dict().items():
        assert torch.equal(teacher.backbone.state_dict()[name], tensor)
    with pytest.raises(UserError, match="do not fit resnet20_cifar with 4 outputs"):
        load_teacher(build_config(settings), [*classes, "d"], torch.device("cpu"))
    with pytest.raises(UserError, match="teacher_weights is for a timm model"):
        load_teacher(build_config({**settings, "teacher": str(weights)}), classes, "cpu")


def test_a_cached_teacher_runs_once_per_image_and_gives_the_same_logits():
    from edgecls.training.losses import CachedTeacher, build_objective

    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    calls = []
    teacher.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    cached = CachedTeacher(teacher)
    images = torch.randint(0, 256, (6, 1, 4, 4)).float() / 255
    first = cached(images[:4])
    again = cached(images[[3, 1, 0]])
    assert calls == [4]
    assert torch.allclose(again, first[[3, 1, 0]])
    cached(images[2:])  # two of these are new: the whole batch runs once more
    assert calls == [4, 4]
    assert torch.allclose(cached(images[[5]]), teacher(images[[5]]))

    from edgecls.models import create_model

    student = create_model(build_config({"model": "resnet20_cifar", "grayscale": True}), 3)
    settings = {"teacher": "x", "kd_cache": True, "augment": "none", "hflip": False}
    objective = build_objective(build_config(settings), [student], teacher)
    logits, labels = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    plain = build_objective(build_config({**settings, "kd_cache": False}), [student], teacher)
    for _ in range(2):
        assert objective([logits], labels, images).item() == pytest.approx(
            plain([logits], labels, images).item(), rel=1e-6
        )
    with pytest.raises(UserError, match="set augment=none hflip=false mixup=0.0"):
        build_objective(
            build_config({"teacher": "x", "kd_cache": True, "mixup": 0.2}), [student], teacher
        )


def test_zero_gamma_zeroes_the_last_batch_norm_of_each_residual_block():
    from edgecls.models import create_model

    def last_norms(settings):
        model = create_model(build_config(settings), 3).backbone
        return (
            [block.bn2.weight for block in model.layer1]
            if hasattr(model, "layer1")
            else [m.bn2.weight for m in model.stages]
        )

    for name in ("resnet18", "resnet20_cifar"):
        assert all((w == 0).all() for w in last_norms({"model": name, "zero_gamma": True}))
        assert all((w == 1).all() for w in last_norms({"model": name, "zero_gamma": False}))
    with pytest.raises(UserError, match="zero_gamma"):
        create_model(build_config({"model": "mobilenetv3_small_100", "zero_gamma": True}), 3)


def test_ema_weights_are_the_running_average_and_are_what_is_evaluated_and_kept():
    from edgecls.data import load_dataset
    from edgecls.training.loop import Trainer

    dataset = load_dataset("digits", input_size=16, grayscale=True, progress=False)
    settings = {"model": "resnet20_cifar", "input_size": 16, "grayscale": True, "ema": 0.5}
    trainer = Trainer(build_config({**settings, "lr": 0.1, "workers": 0}), dataset)
    images, labels = dataset.train.images[:32].float() / 255, dataset.train.labels[:32]
    weight = lambda model: model.backbone.stem[0].weight.detach().clone()  # noqa: E731
    trainer.step(images, labels)  # warmup: the first update's average is the model itself
    assert torch.allclose(weight(trainer.evaluated_model), weight(trainer.model), atol=1e-6)
    expected = weight(trainer.evaluated_model)
    decays = []
    for _ in range(6):
        trainer.step(images, labels)
        decay = 1 - (1 + trainer.state.updates - 1) ** (-2 / 3)  # warming up, capped at `ema`
        decays.append(min(decay, 0.5))
        expected = decays[-1] * expected + (1 - decays[-1]) * weight(trainer.model)
    assert decays[0] < 0.5 and decays[-1] == 0.5  # the warmup reached the decay asked for
    assert torch.allclose(weight(trainer.evaluated_model), expected, atol=1e-5)
    assert not torch.allclose(weight(trainer.evaluated_model), weight(trainer.model))
    checkpoint = trainer.checkpoint()  # best.pt keeps the average, and the trained weights
    assert torch.equal(
        checkpoint["model"]["backbone.stem.0.weight"], weight(trainer.evaluated_model)
    )
    resumed = Trainer(build_config({**settings, "lr": 0.1, "workers": 0}), dataset)
    resumed.restore(checkpoint)
    assert torch.equal(weight(resumed.model), weight(trainer.model))
    assert torch.equal(weight(resumed.evaluated_model), weight(trainer.evaluated_model))


def test_random_erasing_blanks_a_box_of_2_to_25_percent_of_each_image():
    from edgecls.data import ImageSplit
    from edgecls.training.augment import training_batches

    split = ImageSplit(torch.full((8, 1, 32, 32), 255, dtype=torch.uint8), torch.arange(8), [])
    config = build_config({"augment": "none", "random_erasing": 1.0, "batch_size": 8})
    random_state = random.getstate()
    ((images, _),) = training_batches(
        split, config, torch.Generator().manual_seed(0), torch.device("cpu")
    )
    random.setstate(random_state)
    erased = (images == 0).float().mean(dim=(1, 2, 3))
    assert ((erased >= 0.015) & (erased <= 0.26)).all(), erased
    off = build_config({"augment": "none", "batch_size": 8})
    ((plain, _),) = training_batches(
        split, off, torch.Generator().manual_seed(0), torch.device("cpu")
    )
    assert (plain == 1).all()


def test_normalize_train_uses_the_training_sets_own_statistics():
    from edgecls.data import load_dataset
    from edgecls.training.loop import Trainer

    dataset = load_dataset("digits", input_size=16, grayscale=True, progress=False)
    settings = {"model": "resnet20_cifar", "input_size": 16, "grayscale": True, "workers": 0}
    trainer = Trainer(build_config({**settings, "normalize": "train"}), dataset)
    pixels = dataset.train.images.double() / 255
    assert float(trainer.model.mean) == pytest.approx(pixels.mean().item(), rel=1e-5)
    assert float(trainer.model.std) == pytest.approx(pixels.std().item(), rel=1e-3)
    assert float(trainer.checkpoint()["model"]["std"]) == pytest.approx(pixels.std().item(), 1e-3)
    default = Trainer(build_config(settings), dataset)
    assert float(default.model.mean) != pytest.approx(pixels.mean().item(), rel=1e-2)


def test_hsb_jitter_and_pca_lighting_change_colour_within_their_ranges():
    from edgecls.training.augment import LIGHTING_EIGVEC, hsb_jitter, pca_lighting

    generator = torch.Generator().manual_seed(0)
    grey = torch.full((16, 1, 4, 4), 0.5)
    brighter = hsb_jitter(grey, 0.4, generator)
    factors = brighter[:, 0, 0, 0] / 0.5  # grey images: brightness only, one factor per image
    assert (factors >= 0.6 - 1e-6).all() and (factors <= 1.4 + 1e-6).all() and factors.std() > 0
    assert torch.equal(brighter, brighter[:, :, :1, :1].expand_as(brighter))
    colour = torch.rand(16, 3, 4, 4) * 0.5 + 0.25
    assert not torch.allclose(hsb_jitter(colour, 0.4, generator), colour)
    shift = pca_lighting(colour, 0.1, generator) - colour  # one RGB offset per image
    assert torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift), atol=1e-6)
    offsets = shift[:, :, 0, 0]
    along = offsets @ LIGHTING_EIGVEC  # the offsets lie in the eigenvectors' span, mostly the first
    assert along[:, 0].abs().mean() > 5 * along[:, 2].abs().mean()
    assert torch.equal(pca_lighting(grey, 0.1, generator), grey)


def test_drop_block_sets_timms_dropblock_in_a_resnet():
    from timm.layers import DropBlock2d

    from edgecls.models import create_model

    model = create_model(build_config({"model": "resnet18", "drop_block": 0.1}), 3)
    rates = [m.drop_prob for m in model.modules() if isinstance(m, DropBlock2d)]
    assert rates and max(rates) == pytest.approx(0.1)
    with pytest.raises(UserError, match="drop_block"):
        create_model(build_config({"model": "mobilenetv3_small_100", "drop_block": 0.1}), 3)


def test_head_width_resizes_ghostnets_last_layer_and_the_classifier():
    from edgecls.models import create_model

    settings = {"model": "ghostnet_100", "head_width": 320, "grayscale": True}
    model = create_model(build_config(settings), 7).eval()
    assert model.backbone.conv_head.out_channels == 320
    assert model.backbone.get_classifier().in_features == 320
    assert model.backbone.conv_stem.in_channels == 1  # input channels: grayscale
    assert model(torch.rand(2, 1, 64, 64)).shape == (2, 7)
    with pytest.raises(UserError, match="head_width"):
        create_model(build_config({"model": "resnet18", "head_width": 320}), 7)


def test_random_resized_crop_takes_the_asked_share_of_the_image():
    from edgecls.training.augment import random_resized_crop

    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(8, 1, 64, 64).contiguous()
    generator = torch.Generator().manual_seed(0)
    whole = random_resized_crop(ramp, generator, hflip=False, scale=(1.0, 1.0), ratio=(1, 1))
    assert torch.allclose(whole, ramp, atol=1e-5)
    quarter = random_resized_crop(ramp, generator, hflip=False, scale=(0.25, 0.25), ratio=(1, 1))
    spans = quarter[:, 0, 0, -1] - quarter[:, 0, 0, 0]  # half the width: half the ramp
    assert torch.allclose(spans, torch.full_like(spans, 0.5), atol=0.03)
    assert quarter[:, 0, 0, 0].std() > 0.05  # anywhere inside the image


def test_mixup_with_a_shuffled_clone_or_with_the_batch_before():
    np.random.seed(0)
    labels = torch.tensor([0, 1, 2, 3])
    images = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 2, 2).contiguous()
    shuffle = create_batch_transform(build_config({"mixup": 0.4, "mixup_mode": "shuffle"}), 4)
    mixed, targets = shuffle(images, labels, epoch=0)
    lam = targets.max(dim=1).values.min().item()
    partner = (mixed[:, 0, 0, 0] - lam * images[:, 0, 0, 0]) / (1 - lam)  # the clone's images
    assert sorted(partner.round().tolist()) == [0.0, 1.0, 2.0, 3.0]  # a permutation of the batch
    two = create_batch_transform(build_config({"mixup": 0.4, "mixup_mode": "two_batches"}), 8)
    two(images, labels, epoch=0)
    later = images + 4
    mixed, targets = two(later, labels + 4, epoch=0)
    lam = targets[:, 4:].sum(dim=1)[0].item()  # the share of this batch's own classes
    expected = lam * later + (1 - lam) * images  # mixed with the batch before it
    assert torch.allclose(mixed, expected, atol=1e-5)
    assert torch.allclose(targets.sum(dim=1), torch.ones(4))


def test_plateau_follows_the_validation_loss_as_torchs_reduce_lr_on_plateau_does():
    config = build_config(
        {"schedule": "plateau", "lr": 0.1, "patience": 1, "warmup_epochs": 0, "max_epochs": 9}
    )
    ours = create_schedule(config)
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.1)
    torchs = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=0.1, patience=1, threshold=1e-3, min_lr=0.1 * 1e-4
    )
    val_losses = [1.0, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8, 0.8, 0.7]
    for epoch, val_loss in enumerate(val_losses):
        assert ours.lr(epoch) == pytest.approx(optimizer.param_groups[0]["lr"])
        stop = ours.step(epoch, train_loss=5.0, val_top1=0.5, val_loss=val_loss)  # not train loss
        torchs.step(val_loss)
        assert stop == (epoch == 8)
    assert ours.lr(9) == pytest.approx(optimizer.param_groups[0]["lr"]) and ours.lr(9) < 0.01


def test_anti_alias_puts_blur_pooling_in_the_downsampling():
    from timm.layers import BlurPool2d

    from edgecls.models import create_model

    blurred = create_model(build_config({"model": "resnet18", "anti_alias": "blur"}), 3)
    assert sum(isinstance(m, BlurPool2d) for m in blurred.modules()) >= 3  # stages 2-4
    plain = create_model(build_config({"model": "resnet18"}), 3)
    assert not any(isinstance(m, BlurPool2d) for m in plain.modules())


def test_freeze_bn_keeps_the_batch_norm_statistics_while_their_scale_still_learns():
    from torch.nn.modules.batchnorm import _BatchNorm

    from edgecls.data import load_dataset
    from edgecls.training.loop import Trainer

    dataset = load_dataset("digits", input_size=16, grayscale=True, progress=False)
    settings = {"model": "resnet20_cifar", "input_size": 16, "grayscale": True, "max_epochs": 1}
    for frozen in (True, False):
        run = Trainer(build_config({**settings, "freeze_bn": frozen, "workers": 0}), dataset)
        norms = [m for m in run.model.modules() if isinstance(m, _BatchNorm)]
        means = [m.running_mean.clone() for m in norms]
        scales = [m.weight.clone() for m in norms]
        run.train_one_epoch(0)
        same_means = all(torch.equal(a, m.running_mean) for a, m in zip(means, norms, strict=True))
        assert same_means is frozen
        assert not all(torch.equal(a, m.weight) for a, m in zip(scales, norms, strict=True))


def test_a_balanced_sampler_draws_every_class_equally_often():
    from edgecls.data.per_image import _SeededShuffle
    from edgecls.training.augment import balanced_sample_weights, index_batches

    labels = torch.tensor([0] * 2000 + [1] * 100)  # 1:20
    weights = balanced_sample_weights(labels)
    drawn = torch.cat(
        list(index_batches(len(labels), 100, torch.Generator().manual_seed(0), weights))
    )
    share = (labels[drawn] == 1).float().mean().item()
    assert 0.45 < share < 0.55  # about half, against 1/21 in a shuffle
    order = [i for i, _ in _SeededShuffle(len(labels), torch.Generator().manual_seed(1), weights)]
    assert 0.45 < (labels[order] == 1).float().mean().item() < 0.55
    plain = torch.cat(list(index_batches(len(labels), 100, torch.Generator().manual_seed(0))))
    assert sorted(plain.tolist()) == list(range(2100))


def test_class_weights_give_every_class_the_same_total_weight_in_the_loss():
    from edgecls.training.losses import class_weights

    labels = torch.tensor([0] * 30 + [1] * 10 + [2] * 5)
    weight = class_weights(labels, 3)
    totals = [weight[c] * (labels == c).sum() for c in range(3)]
    assert torch.allclose(torch.stack(totals), torch.full((3,), 15.0))
    logits = torch.randn(45, 3)
    expected = F.cross_entropy(logits, labels, weight=weight)
    assert margin_cross_entropy(logits, labels, 0.0, 0.0, weight) == pytest.approx(expected.item())


def test_balance_auto_picks_the_sampler_above_one_to_ten_and_says_so(capsys):
    from edgecls.data import Dataset, ImageSplit
    from edgecls.evaluate import compute_metrics
    from edgecls.training.pipeline import resolve_balance

    def dataset(counts):
        labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
        split = ImageSplit(torch.zeros(len(labels), 1, 4, 4, dtype=torch.uint8), labels, [])
        return Dataset("d", ["a", "b"], split, split, None, [], [], False)

    auto = build_config({"balance": "auto"})
    assert resolve_balance(auto, dataset([200, 10])).balance == "sampler"
    assert "1:20" in capsys.readouterr().err
    assert resolve_balance(auto, dataset([100, 50])).balance == "none"
    assert (
        resolve_balance(build_config({"balance": "weights"}), dataset([200, 10])).balance
        == "weights"
    )
    # balanced accuracy: the mean of per-class recall, blind to how common each class is
    logits = torch.tensor([[1.0, 0.0]] * 9 + [[0.0, 1.0]] + [[1.0, 0.0]])
    metrics = compute_metrics(logits, torch.tensor([0] * 10 + [1]), ["a", "b"])
    assert metrics.balanced_accuracy == pytest.approx((0.9 + 0.0) / 2)
    assert metrics.to_dict()["balanced_accuracy"] == metrics.balanced_accuracy


def test_tta_averages_the_logits_of_the_image_and_its_mirror():
    from edgecls.models import create_model, model_from_checkpoint, one_view

    config = build_config({"model": "resnet20_cifar", "input_size": 16, "grayscale": True})
    model = create_model(config, 3).eval()
    pixels = torch.rand(4, 1, 16, 16)
    with torch.no_grad():
        plain, mirrored = model(pixels), model(pixels.flip(-1))
        assert not torch.allclose(plain, mirrored)
        model.mirror_average = True
        assert torch.allclose(model(pixels), (plain + mirrored) / 2, atol=1e-6)
        with one_view(model):  # what saliency maps explain
            assert torch.allclose(model(pixels), plain)
        assert model.mirror_average
    checkpoint = {"config": {**config.to_dict(), "tta": True}, "classes": ["a", "b", "c"]}
    rebuilt, _ = model_from_checkpoint({**checkpoint, "model": model.state_dict()})
    assert rebuilt.mirror_average  # evaluation, predict and export rebuild it this way
    rebuilt, _ = model_from_checkpoint(
        {**checkpoint, "config": config.to_dict(), "model": model.state_dict()}
    )
    assert not rebuilt.mirror_average


def test_shifted_moves_the_image_diagonally_and_repeats_its_edges():
    from edgecls.models import shifted

    pixels = torch.arange(2 * 25, dtype=torch.float).view(1, 2, 5, 5)
    down_right, up_left = shifted(pixels, 2), shifted(pixels, -2)
    assert down_right.shape == up_left.shape == pixels.shape
    assert torch.equal(down_right[..., 2:, 2:], pixels[..., :-2, :-2])
    assert torch.equal(up_left[..., :-2, :-2], pixels[..., 2:, 2:])
    assert torch.equal(down_right[..., 0, 2:], pixels[..., 0, :-2])  # the top row repeated
    assert torch.equal(up_left[..., -1, -1], pixels[..., -1, -1])


def test_tta_shift_averages_the_logits_of_the_shifted_views():
    from edgecls.models import create_model, model_from_checkpoint, one_view, shift_pixels, shifted

    config = build_config({"model": "resnet20_cifar", "input_size": 16, "grayscale": True})
    model = create_model(config, 3).eval()
    pixels = torch.rand(4, 1, 16, 16)
    with torch.no_grad():
        views = [pixels, shifted(pixels, 1), shifted(pixels, -1)]
        plain, *moved = (model(view) for view in views)
        model.shifted_views_by = 1  # pixel
        assert torch.allclose(model(pixels), (plain + sum(moved)) / 3, atol=1e-6)
        with one_view(model):
            assert torch.allclose(model(pixels), plain)
        assert model.shifted_views_by == 1
    checkpoint = {"config": {**config.to_dict(), "tta_shift": 0.1}, "classes": ["a", "b", "c"]}
    rebuilt, _ = model_from_checkpoint({**checkpoint, "model": model.state_dict()})
    assert rebuilt.shifted_views_by == 2 and not rebuilt.mirror_average  # 0.1 of 16 pixels
    assert shift_pixels(0.01, 16) == 1 and shift_pixels(0.0, 16) == 0  # on: a pixel at least


def test_a_budget_keeps_time_for_every_test_time_view():
    from edgecls.models import views_averaged

    counts = [
        views_averaged(build_config({"tta": tta, "tta_shift": shift}))
        for tta in (False, True)
        for shift in (0.0, 0.03125)
    ]
    assert counts == [1, 3, 2, 6]


def test_a_tta_run_scores_and_exports_the_average_of_its_views(tmp_path):
    """The final scores of a tta run and its ONNX model are the averaged logits of best.pt over
    the image, its mirror and both shifted diagonally."""
    import onnxruntime as ort

    import edgecls
    from edgecls import runs
    from edgecls.data import load_dataset
    from edgecls.models import model_from_checkpoint, shifted

    run = edgecls.train(
        "digits", recipe="digits", run_dir=tmp_path / "run", progress=False, max_epochs=2,
        input_size=16, model="resnet20_cifar", tta=True, tta_shift=1 / 16, export="onnx",
        audit="off",
    )  # fmt: skip
    checkpoint = runs.load_checkpoint(run.run_dir / "best.pt")
    model, _ = model_from_checkpoint(checkpoint)
    val = load_dataset("digits", input_size=16, grayscale=True, progress=False).val
    pixels = val.images.float() / 255
    views = [pixels, pixels.flip(-1)]
    views += [shifted(view, by) for view in views for by in (1, -1)]
    with torch.no_grad():
        averaged = sum(model.head(model.backbone((v - model.mean) / model.std)) for v in views)
    averaged = averaged / 6
    top1 = (averaged.argmax(1) == val.labels).float().mean().item()
    assert run.metrics["val_top1"] == pytest.approx(top1, abs=1e-6)
    session = ort.InferenceSession(str(run.run_dir / "export" / "model.onnx"))
    (exported,) = session.run(None, {session.get_inputs()[0].name: pixels.numpy()})
    expected = (averaged / checkpoint["temperature"]).softmax(1).numpy()
    assert np.allclose(exported, expected, atol=1e-4)


def test_a_whitened_stem_gives_decorrelated_channels_of_nearly_unit_variance():
    from edgecls.data import load_dataset
    from edgecls.models.whitening import whiten_stem
    from edgecls.training.loop import Trainer

    dataset = load_dataset("digits", input_size=16, grayscale=True, progress=False)
    settings = {"model": "resnet20_cifar", "input_size": 16, "grayscale": True, "workers": 0}
    images = dataset.train.images

    def stem_covariance(whiten: bool) -> torch.Tensor:
        trainer = Trainer(build_config({**settings, "whiten_stem": whiten}), dataset)
        stem = trainer.model.backbone.stem[0]  # 3x3, 1 -> 16 channels, no padding effect below
        pixels = (images.float() / 255 - trainer.model.mean) / trainer.model.std
        out = F.conv2d(pixels, stem.weight, stride=stem.stride)  # no padding: whole patches
        return torch.cov(out.transpose(0, 1).reshape(16, -1).double())

    covariance = stem_covariance(True)
    top = covariance[:8, :8]  # the 8 strongest components; 8-15 are their negatives
    off_diagonal = top - torch.diag(torch.diag(top))
    assert off_diagonal.abs().max() < 0.05
    assert torch.diag(top)[:4].min() > 0.9  # strong components: variance / (variance + eps)
    assert torch.allclose(covariance[8:, 8:], top, atol=1e-6)  # the negatives: the same
    random = stem_covariance(False)[:8, :8]  # smooth images: random filters correlate
    scale = torch.diag(random).sqrt()
    correlation = random / scale.outer(scale)
    assert (correlation - torch.eye(8)).abs().max() > 0.5
    assert whiten_stem(torch.nn.Sequential(torch.nn.Linear(3, 3)), images) == 0


def test_progressive_resizing_grows_the_side_to_full_by_three_quarters_of_the_run():
    from edgecls.training.augment import FULL_SIDE_AT, progressive_side

    sides = [progressive_side(32, 0.5, step / 100) for step in range(101)]
    assert sides[0] == 16 and sides == sorted(sides) and set(sides) <= {16, 20, 24, 28, 32}
    assert sides[round(100 * FULL_SIDE_AT)] == 32 and sides[-1] == 32
    assert progressive_side(32, 0.0, 0.0) == 32  # off
    assert progressive_side(16, 0.25, 0.0) == 8  # never below 8 pixels


def test_progressive_resizing_trains_small_early_and_at_full_size_at_the_end():
    from edgecls.data import load_dataset
    from edgecls.training.loop import Trainer

    dataset = load_dataset("digits", input_size=16, grayscale=True, progress=False)
    settings = {"model": "resnet20_cifar", "input_size": 16, "grayscale": True, "workers": 0}
    config = build_config({**settings, "progressive_resizing": 0.5, "max_epochs": 4})
    trainer = Trainer(config, dataset)
    trainer.dataset = dataclasses.replace(dataset, train=dataset.train.subset(range(64)))
    seen = []
    trainer.model.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[-1]))
    by_epoch = []
    for epoch in range(4):
        seen.clear()
        trainer.train_one_epoch(epoch)
        by_epoch.append(set(seen))
    assert by_epoch == [{8}, {12}, {12}, {16}]


def test_validation_loss_breaks_ties_in_top1_when_picking_the_best_epoch():
    from edgecls.training.loop import better_epoch

    assert better_epoch(0.95, 0.9, 0.90, 0.1)  # higher top-1 wins whatever the loss
    assert not better_epoch(0.90, 0.01, 0.95, 0.9)
    assert better_epoch(0.95, 0.08, 0.95, 0.10)  # a tie at a lower loss wins
    assert not better_epoch(0.95, 0.10, 0.95, 0.10)  # the earlier of equals stays
    assert not better_epoch(0.95, float("nan"), 0.95, 0.10)
    assert better_epoch(0.0, float("nan"), -1.0, float("inf"))  # the first epoch always counts


def test_keep_epoch_last_keeps_every_epoch_even_a_worse_one():
    from edgecls.evaluate import compute_metrics
    from edgecls.training.loop import RunState, kept_epoch

    state = RunState(best_top1=1.0, best_loss=0.01, best_epoch=3)
    worse = compute_metrics([[2.0, 0.0], [2.0, 0.0]], [0, 1], ["a", "b"])  # top-1 50%
    assert not kept_epoch("best", worse, state)
    assert kept_epoch("last", worse, state)


def test_the_summary_says_which_epoch_was_kept():
    from edgecls.runs import kept_epoch_row

    last = {"best_epoch": 7, "epochs_trained": 7, "keep_epoch": "last"}
    assert kept_epoch_row(last) == ("kept epoch", "7 of 7 trained (the last: keep_epoch=last)")
    best = {"best_epoch": 5, "epochs_trained": 7, "keep_epoch": "best"}
    assert kept_epoch_row(best) == ("best epoch", "5 of 7 trained")
    assert kept_epoch_row({"best_epoch": 5, "epochs_trained": 7}) == kept_epoch_row(best)
