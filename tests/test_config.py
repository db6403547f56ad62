"""Model config validation: bad configs raise one clear error naming the field."""

import pytest

from nami_core.config import ModelConfig, get_preset, guidance_record, split_guidance, split_steps
from nami_core.errors import ConfigError


def make(**overrides):
    base = dict(width=64, heads=2, double_blocks=2, single_blocks=2, stage_ends=(1, 2, 4), rope_axes=(8, 12, 12))
    base.update(overrides)
    return ModelConfig(**base)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(heads=3), "heads (3) must divide width (64)"),
        (dict(stage_ends=(2, 2, 4)), "must be strictly increasing"),
        (dict(stage_ends=(3, 1, 4)), "must be strictly increasing"),
        (dict(stage_ends=(1, 2, 5)), "exceed the model depth of 4 blocks"),
        (dict(stage_ends=(1, 2, 3)), "must end at the model depth of 4 blocks"),
        (dict(stage_ends=()), "at least one stage"),
        (dict(rope_axes=(8, 8, 8)), "must sum to the head dim"),
        (dict(prediction="noise"), "prediction must be one of"),
        (dict(width=0), "width must be a positive integer"),
        # a list of integers is never rounded nor parsed: 4.0000001 is no stage end
        (dict(stage_ends=(1, 2, 4.0000001)), "stage_ends must be a list of integers, got [1, 2, 4.0000001]"),
        (dict(stage_ends=(1, 2, "4")), "stage_ends must be a list of integers"),
        (dict(stage_ends=(1, True, 4)), "stage_ends must be a list of integers"),
        (dict(stage_ends=4), "stage_ends must be a list of integers, got 4"),
        (dict(rope_axes=(8, 12, 12.5)), "rope_axes must be a list of integers"),
    ],
)
def test_bad_model_configs(overrides, message):
    with pytest.raises(ConfigError) as err:
        make(**overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_integral_stage_ends_read_as_integers():
    import numpy as np

    assert make(stage_ends=(1.0, np.int64(2), 4)).stage_ends == (1, 2, 4)


def test_steps_must_match_stages():
    with pytest.raises(ConfigError, match="steps lists 2 counts but the plan has 3 stages"):
        split_steps("10,10", 3)
    with pytest.raises(ConfigError, match="fewer than the 3 stages"):
        split_steps(2, 3)
    with pytest.raises(ConfigError, match="comma-separated integers"):
        split_steps("10,x,10", 3)
    assert split_steps("30", 3) == (10, 10, 10)


def test_guidance_is_one_scale_or_one_per_stage():
    assert split_guidance(3, 3) == (3.0, 3.0, 3.0)
    assert split_guidance("4.5", 2) == (4.5, 4.5)
    assert split_guidance("8,3,1", 3) == (8.0, 3.0, 1.0)
    assert split_guidance([12, 3, 3], 3) == (12.0, 3.0, 3.0)
    with pytest.raises(ConfigError, match="cfg lists 2 scales but the plan has 3 stages"):
        split_guidance("8,3", 3)
    with pytest.raises(ConfigError, match="cfg must be comma-separated numbers, got 'high'"):
        split_guidance("high", 3)
    with pytest.raises(ConfigError, match="cfg must be positive"):
        split_guidance("8,0,3", 3)
    with pytest.raises(ConfigError, match="cfg must be positive"):
        split_guidance(float("nan"), 3)
    assert guidance_record((3.0, 3.0, 3.0)) == 3.0
    assert guidance_record((8.0, 3.0, 3.0)) == [8.0, 3.0, 3.0]


def test_presets_match_the_spec_table():
    nami2b = get_preset("nami-2b").model
    assert (nami2b.width, nami2b.heads, nami2b.head_dim) == (2048, 16, 128)
    assert (nami2b.double_blocks, nami2b.single_blocks, nami2b.stage_ends) == (8, 14, (9, 16, 22))
    small = get_preset("nami-0.6b").model
    assert (small.width, small.heads, small.double_blocks, small.single_blocks, small.stage_ends) == (
        1536, 12, 4, 8, (5, 9, 12))
    base = get_preset("flux-base-2b")
    assert base.model.stage_ends == (22,) and base.default_mode == "flux-base"
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        get_preset("huge")


def test_model_config_round_trips_through_transformer_config():
    cfg = make()
    again = ModelConfig.from_transformer_config(cfg.transformer_kwargs())
    assert again == cfg
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown model config field"):
        ModelConfig.from_dict({**cfg.to_dict(), "depth": 3})
