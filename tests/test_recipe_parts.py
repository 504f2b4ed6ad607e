"""The paper's recipe ingredients, each against its defining formula or behaviour."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgecls.config import build_config, load_recipe
from edgecls.models import create_model
from edgecls.models.heads import CosineHead, am_softmax_scale
from edgecls.training.augment import LIGHT, basic_augment
from edgecls.training.loop import set_lr
from edgecls.training.losses import kl_to, margin_cross_entropy, mutual_objective
from edgecls.training.optim import SAM, create_optimizer, parameter_groups, sam_update, scaled_lr

# --- SAM ---------------------------------------------------------------------------------------

A = torch.tensor([[3.0, 1.0], [1.0, 2.0]])


def quadratic_loss(w: torch.Tensor) -> torch.Tensor:
    return 0.5 * w @ A @ w  # gradient: A w


def expected_sam_step(w0: torch.Tensor, lr: float, rho: float, adaptive: bool) -> torch.Tensor:
    g = A @ w0
    t = w0.abs() if adaptive else torch.ones_like(w0)
    e = rho * t * t * g / torch.linalg.norm(t * g)
    return w0 - lr * (A @ (w0 + e))


@pytest.mark.parametrize("adaptive", [False, True])
def test_one_sam_step_matches_the_formula(adaptive):
    w0 = torch.tensor([1.0, -2.0])
    w = nn.Parameter(w0.clone())
    sam = SAM(torch.optim.SGD([w], lr=0.1), rho=0.05, adaptive=adaptive)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    applied = sam_update(sam, scaler, quadratic_loss(w), lambda: quadratic_loss(w), [])
    assert applied
    assert torch.allclose(w.detach(), expected_sam_step(w0, 0.1, 0.05, adaptive), atol=1e-6)


def test_sam_with_loss_scaling_unscales_before_perturbing_and_skips_inf():
    w0 = torch.tensor([1.0, -2.0])
    w = nn.Parameter(w0.clone())
    sam = SAM(torch.optim.SGD([w], lr=0.1), rho=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    assert sam_update(sam, scaler, quadratic_loss(w), lambda: quadratic_loss(w), [])
    assert torch.allclose(w.detach(), expected_sam_step(w0, 0.1, 0.05, False), atol=1e-5)

    before = w.detach().clone()
    scale = scaler.get_scale()
    infinite = quadratic_loss(w) * float("inf")
    assert not sam_update(sam, scaler, infinite, lambda: quadratic_loss(w), [])
    assert torch.equal(w.detach(), before)  # step skipped
    assert scaler.get_scale() < scale  # and the loss scale backed off


def test_sam_second_pass_leaves_batch_norm_statistics_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 1))
    reference = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 1))
    reference.load_state_dict(model.state_dict())
    x = torch.randn(16, 4)
    sam = SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.5)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    sam_update(sam, scaler, model(x).pow(2).mean(), lambda: model(x).pow(2).mean(), [model])
    reference(x)  # one forward pass in training mode: one running-statistics update
    assert torch.allclose(model[1].running_mean, reference[1].running_mean)
    assert torch.allclose(model[1].running_var, reference[1].running_var)


def test_sam_makes_two_forward_backward_passes_per_step():
    config = build_config({"model": "mobilenetv3_small_050", "sam": True, "input_size": 32})
    model = create_model(config, 3)
    optimizer = create_optimizer([model], config)
    assert isinstance(optimizer, SAM)
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    images, labels = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])

    def loss():
        return F.cross_entropy(model(images), labels)

    sam_update(optimizer, torch.amp.GradScaler("cpu", enabled=False), loss(), loss, [model])
    assert len(calls) == 2


# --- no bias decay -----------------------------------------------------------------------------


def test_no_bias_decay_groups_and_proportional_schedule():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    groups = parameter_groups([model], 5e-4, no_bias_decay=True, bias_lr_factor=2.0)
    weights, norm, biases = groups
    assert [p.ndim for p in weights["params"]] == [4, 2]  # conv and linear weights
    assert weights["weight_decay"] == 5e-4 and weights["lr_scale"] == 1.0
    assert len(norm["params"]) == 1 and norm["weight_decay"] == 0.0  # batch-norm weight
    assert len(biases["params"]) == 3 and biases["weight_decay"] == 0.0
    assert biases["lr_scale"] == 2.0
    optimizer = torch.optim.SGD(groups, lr=1.0)
    for lr in (0.002, 0.01, 0.001):  # warmup, peak, after a plateau reduction
        set_lr(optimizer, lr)
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([lr, lr, 2 * lr])


def test_without_no_bias_decay_everything_decays_at_one_lr():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    groups = parameter_groups([model], 5e-4, no_bias_decay=False, bias_lr_factor=2.0)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 5e-4 and groups[0]["lr_scale"] == 1


def test_linear_lr_scaling_with_batch_size():
    assert scaled_lr(build_config({"lr_batch_scaling": True, "batch_size": 128}), 0.1) == 0.05
    assert scaled_lr(build_config({"batch_size": 128}), 0.1) == 0.1
    config = build_config(
        {
            "model": "mobilenetv3_small_050",
            "lr": 0.1,
            "batch_size": 512,
            "lr_batch_scaling": True,
            "no_bias_decay": True,
        }
    )
    optimizer = create_optimizer([create_model(config, 3)], config)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.2, 0.2, 0.2])
    set_lr(optimizer, scaled_lr(config, 0.1))  # what the loop does each epoch
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.2, 0.2, 0.4])


# --- AM-Softmax ---------------------------------------------------------------------------------


def test_am_softmax_scale_follows_the_paper():
    assert am_softmax_scale(10) == pytest.approx(math.sqrt(2) * math.log(9))
    assert am_softmax_scale(100) == pytest.approx(math.sqrt(2) * math.log(99))
    assert am_softmax_scale(3) == 3.0  # sqrt(2) ln 2 < 3
    assert am_softmax_scale(2) == 3.0


def test_cosine_head_outputs_scaled_cosines():
    head = CosineHead(2, 2, scale=4.0)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    logits = head(torch.tensor([[3.0, 0.0]]))
    assert torch.allclose(logits, torch.tensor([[4.0, 4.0 / math.sqrt(2)]]))


def test_am_softmax_loss_subtracts_the_margin_from_the_target_logit_only():
    logits = torch.tensor([[2.0, 1.0, 0.5]])
    s, m = 3.0, 0.35
    loss = margin_cross_entropy(logits, torch.tensor([1]), margin=s * m)
    target = 1.0 - s * m
    expected = -target + math.log(math.exp(2.0) + math.exp(target) + math.exp(0.5))
    assert loss.item() == pytest.approx(expected)
    assert margin_cross_entropy(logits, torch.tensor([1]), 0.0).item() == pytest.approx(
        F.cross_entropy(logits, torch.tensor([1])).item()
    )


def test_efficientnet_recipe_builds_an_am_softmax_model():
    config = build_config(load_recipe("efficientnet_b0"), {"pretrained": False})
    model = create_model(config, 10)
    assert isinstance(model.head, CosineHead)
    assert model.head.scale == pytest.approx(am_softmax_scale(10))
    assert model.margin == pytest.approx(am_softmax_scale(10) * 0.35)


# --- mutual learning ----------------------------------------------------------------------------


def test_kl_matches_its_definition():
    p_logits, q_logits = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    p, q = p_logits.softmax(1)[0], q_logits.softmax(1)[0]
    expected = float((p * (p / q).log()).sum())
    assert kl_to(p_logits, q_logits).item() == pytest.approx(expected)


def test_mutual_learning_gives_each_model_the_gradient_of_its_own_loss():
    torch.manual_seed(0)
    base = build_config({"model": "mobilenetv3_small_050", "input_size": 32})
    fast = create_model(base, 3).eval()
    slow_config = build_config(
        {**base.to_dict(), "head": "am_softmax", "am_scale": 1.0, "am_margin": 0.0}
    )
    slow = create_model(slow_config, 3).eval()
    images, labels = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 1])

    mutual_objective(fast, slow)([fast(images), slow(images)], labels, images).backward()
    joint = [p.grad.clone() for p in fast.parameters() if p.grad is not None]

    fast.zero_grad()
    fast_logits, slow_logits = fast(images), slow(images).detach()
    own = F.cross_entropy(fast_logits, labels) + kl_to(slow_logits, fast_logits)
    own.backward()
    alone = [p.grad for p in fast.parameters() if p.grad is not None]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(joint, alone, strict=True))


# --- recipes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["mobilenetv3_small_100", "mobilenetv3_large_075", "mobilenetv3_large_100"]
)
def test_mobilenetv3_recipes_switch_on_the_whole_paper_recipe(name):
    config = build_config(load_recipe(name))
    assert config.model == name and config.input_size == 224
    assert (config.sam, config.no_bias_decay, config.mutual) == (True, True, True)
    assert config.augment == "augmix" and config.lr == "tpe" and config.schedule == "plateau_v2"
    assert config.lr_search_range == [0.005, 0.03] and config.weight_decay == 5e-4


def test_baseline_recipe_is_the_papers_baseline():
    config = build_config(load_recipe("baseline"))
    assert config.schedule == "cosine" and config.max_epochs == 200
    assert config.augment == "basic" and config.dropout == 0.2 and isinstance(config.lr, float)
    assert not (config.sam or config.mutual or config.no_bias_decay)


def test_every_ingredient_can_be_switched_off():
    config = build_config(
        load_recipe("mobilenetv3_large_100"),
        {"sam": False, "mutual": False, "no_bias_decay": False, "augment": "basic", "lr": 0.01},
    )
    assert not (config.sam or config.mutual or config.no_bias_decay)
    assert config.augment == "basic" and config.lr == 0.01


def test_light_augmentation_moves_pixels_but_keeps_their_values():
    """`light` shifts and scales only: a flat image stays as it is, and a pattern's pixel
    values are interpolated, never brightened or contrasted; `basic` changes both."""
    generator = torch.Generator().manual_seed(0)
    flat = torch.full((8, 1, 32, 32), 0.5)
    assert torch.allclose(basic_augment(flat, generator, hflip=False, **LIGHT), flat)
    assert not torch.allclose(basic_augment(flat, generator, hflip=False), flat)
    stripes = torch.zeros(8, 1, 32, 32)
    stripes[..., ::4] = 1.0
    moved = basic_augment(stripes, generator, hflip=False, **LIGHT)
    assert not torch.allclose(moved, stripes) and moved.min() >= 0 and moved.max() <= 1
