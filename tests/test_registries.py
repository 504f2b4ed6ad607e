"""Registries and the config declared once: a trick, a schedule or an optimizer is one
registration, and the config's allowed values, the reference and the errors follow it."""

import dataclasses

import pytest

from edgecls.config import Config, build_config, describe_keys
from edgecls.errors import UserError
from edgecls.registry import (
    AUGMENT_POLICIES,
    BATCH_TRANSFORMS,
    OBJECTIVES,
    OPTIMIZERS,
    SCHEDULES,
    Registry,
)
from edgecls.training.schedules import ConstantSchedule, create_schedule


@pytest.fixture
def halving_schedule():
    """A schedule registered by a test, as a user's extension would be, removed afterwards."""

    @SCHEDULES.register("halving", "the LR halves every epoch")
    def halving(config: Config, budget) -> ConstantSchedule:
        return ConstantSchedule(config.lr / 2, config.max_epochs)

    yield halving
    del SCHEDULES.entries()["halving"]


def test_a_registered_schedule_is_a_config_value_and_is_built(halving_schedule):
    config = build_config({"schedule": "halving", "lr": 0.1})
    assert isinstance(create_schedule(config), ConstantSchedule)
    assert create_schedule(config).lr(0) == pytest.approx(0.05)
    (schedule_key,) = [k for k in describe_keys() if k.name == "schedule"]
    assert "halving" in schedule_key.allowed


def test_an_unregistered_name_is_refused_naming_the_registered_ones():
    with pytest.raises(UserError, match="must be one of plateau_v2, plateau, cosine"):
        build_config({"schedule": "halving"})
    with pytest.raises(UserError, match="did you mean 'cosine'"):
        SCHEDULES["cosin"]


def test_each_registry_names_what_the_config_allows():
    assert OPTIMIZERS.names() == (
        "sgd",
        "nesterov",
        "adam",
        "adamw",
        "nadam",
        "rmsprop",
        "adadelta",
    )
    assert set(AUGMENT_POLICIES.names()) == {
        "augmix", "autoaugment", "randaugment", "basic", "light", "crop", "none"
    }  # fmt: skip
    assert BATCH_TRANSFORMS.names() == ("stitch", "mixup_pairs", "timm_mix")  # stitching first
    assert OBJECTIVES.names() == ("cross_entropy", "mutual")
    for key, registry in [("schedule", SCHEDULES), ("optimizer", OPTIMIZERS)]:
        (doc,) = [k for k in describe_keys() if k.name == key]
        assert doc.allowed == ", ".join(registry.names())


def test_a_name_registered_twice_is_a_programming_error():
    registry = Registry("thing", "edgecls.errors")
    registry.register("a", "first")(1)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("a", "second")(2)


def test_a_validated_config_is_never_changed():
    config = build_config({"lr": 0.1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 1.0
    assert dataclasses.replace(config, lr=1.0).lr == 1.0 and config.lr == 0.1


def test_list_defaults_are_not_shared_between_configs():
    first, second = Config(), Config()
    assert first.crop_scale == second.crop_scale and first.crop_scale is not second.crop_scale


def test_edgecls_keys_lists_the_declarations(halving_schedule):
    from click.testing import CliRunner

    from edgecls.cli import main

    result = CliRunner().invoke(main, ["keys", "schedule"])
    assert result.exit_code == 0, result.output
    assert "plateau_v2" in result.output and "halving" in result.output
    assert "learning-rate" in result.output
