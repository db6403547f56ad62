"""`TrainConfig` is parsed once, at construction, into the typed values the run uses; its checks
run there too (no torch), and what it records in train_config.json reads back to the same settings."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest

from nami_core.config import field_default
from nami_core.errors import ConfigError
from nami_core.train.config import TrainConfig
from nami_core.train.phases import PAPER_LR, PAPER_RATIOS, Phase, parse_phases, parse_stage_mix

BASE = dict(data="data", out="run", stages="16,32,64")


def test_text_is_parsed_once_into_typed_fields():
    c = TrainConfig(**BASE, stage_mix="4:2:1", lr=1e-3, window_ratios="1:2:1", sample_steps="4,4,2",
                    sample_cfg="15,3,3", stage_loss_weights="1,0.5,1")
    assert c.stages == (16, 32, 64)
    assert c.stage_mix == (Phase(0, (4.0, 2.0, 1.0)),)
    assert c.lr_schedule == (Phase(0, (1e-3,)),)
    assert c.window_ratios == (1.0, 2.0, 1.0) and c.sample_steps == (4, 4, 2)
    assert c.sample_cfg == (15.0, 3.0, 3.0) and c.stage_loss_weights == (1.0, 0.5, 1.0)


def test_defaults_are_filled_in_from_one_place():
    c = TrainConfig(**BASE)
    assert c.stage_mix == tuple(parse_phases(PAPER_RATIOS, "x", 3))
    assert c.lr_schedule == tuple(parse_phases(PAPER_LR, "x", 1))
    assert c.sample_cfg == (3.0,) and c.stage_loss_weights == "auto" and c.sample_steps is None
    two = TrainConfig(data="d", out="o", stages=(32, 64))
    assert two.stage_mix == (Phase(0, (1.0, 1.0)),)
    assert c.batch_size == field_default(TrainConfig, "batch_size") == 32


def test_a_schedule_or_one_mix_is_the_same_spelling():
    assert parse_stage_mix("4:2:1", 3) == parse_stage_mix("0:4:2:1", 3) == [Phase(0, (4.0, 2.0, 1.0))]
    assert parse_stage_mix("0:4:2:1,120000:2:4:1", 3) == [Phase(0, (4.0, 2.0, 1.0)), Phase(120000, (2.0, 4.0, 1.0))]
    with pytest.raises(ConfigError, match="--stage-mix has 2 weights for 3 stages"):
        parse_stage_mix("1:1", 3)


def test_the_record_reads_back_to_the_same_settings():
    c = TrainConfig(**BASE, stage_mix="0:4:2:1,100:1:2:4", lr_schedule="0:1e-4,50:3.3e-5", sample_cfg="12.5,3,3",
                    sample_steps="3,3,3", window_ratios="1:1:2", stage_loss_weights="1,1,0.25", seed=7)
    record = json.loads(json.dumps(c.to_json()))
    assert record["stage_mix"] == "0:4:2:1,100:1:2:4" and record["lr_schedule"] == "0:0.0001,50:3.3e-05"
    assert record["sample_cfg"] == "12.5,3,3" and record["sample_steps"] == "3,3,3" and record["stages"] == [16, 32, 64]
    assert record["data"] == str(c.data.resolve())  # inputs are recorded absolute, readable from any folder
    assert TrainConfig(**record) == replace(c, data=c.data.resolve())
    assert replace(c, steps=5).stage_mix == c.stage_mix  # parsed values pass through again unchanged


@pytest.mark.parametrize("change,message", [
    ({"batch_size": 0}, "--batch-size must be at least 1, got 0"),
    ({"stages": "16,32,60"}, "must double"),
    ({"mode": "turbo"}, "--mode must be one of nami, flow-only, flux-base, got 'turbo'"),
    ({"dtype": "fp8"}, "--dtype must be one of auto, fp32, bf16, fp16, got 'fp8'"),
    ({"grad_checkpointing": "some"}, "--grad-checkpointing must be one of none, full, last-stage, auto"),
    ({"stage_mix": "0:1:1,100:1:1:1"}, "--stage-mix: phase '0:1:1' has 2 values, expected 3"),
    ({"sample_cfg": "0"}, "--sample-cfg must be positive"),
    ({"sample_steps": "4,0,4"}, "--sample-steps must be at least 1, got 0"),
    ({"stage_loss_weights": "1,-1,1"}, "--stage-loss-weights must be non-negative"),
    ({"lora": 4}, "--lora trains an adapter on a model: give the model with --model MODEL"),
    ({"lora": 0, "init": "m"}, "--lora must be a rank of at least 1, got 0"),
    ({"preset": "tiny", "init": "m"}, "give one of --preset, --config and --model"),
])
def test_bad_settings_are_refused_at_construction(change, message):
    with pytest.raises(ConfigError) as caught:
        TrainConfig(**{**BASE, **change})
    assert message in str(caught.value)


def test_the_training_run_takes_the_parsed_schedules():
    from nami_core.train.loop import Schedules

    c = TrainConfig(**BASE, stage_mix="0:1:1:1,10:1:2:4")
    schedules = Schedules.of(c)
    assert schedules.stage_mix == list(c.stage_mix) and schedules.lr == list(c.lr_schedule)


def test_train_memory_defaults_are_train_config_defaults():
    from nami_core.train.config import TrainMemoryRequest, train_memory_request

    request = TrainMemoryRequest()
    for name in ("batch_size", "dtype", "grad_checkpointing", "ema_decay"):
        assert getattr(request, name) == field_default(TrainConfig, name)
    assert request.targets == field_default(TrainConfig, "lora_targets")
    assert train_memory_request(False) is None
    with pytest.raises(ConfigError, match="--batch-size, --gpus need --train-memory"):
        train_memory_request(False, batch_size=4, gpus=2, fsdp=None)


# The "flow" section of a `--config` file, and the window ratios wherever they come from: the rule
# of every relative weight (finite, above 0, at most 1e6, else their sum overflows and every step
# is non-finite), the section an object of known number fields.
FLOW_SECTIONS = [
    (5, 'must be an object such as {"window_ratios": [1, 1, 1]}, got 5'),
    ({"window_ratios": [1e308, 1e308, 1e308]}, "window_ratios are relative, each at most 1,000,000"),
    ({"window_ratio": [1, 1, 1]}, 'unknown "flow" field(s) window_ratio; known: window_ratios, gamma'),
    ({"window_ratios": "1:1:1"}, '"flow" takes numbers (window_ratios a list of them)'),
    ({"gamma": "1/3"}, '"flow" takes numbers'),
    ({"gamma": True}, '"flow" takes numbers'),
]


@pytest.mark.parametrize("flow, message", FLOW_SECTIONS, ids=lambda x: str(x)[:20])
def test_the_flow_section_of_a_config_file(tmp_path, flow, message):
    from nami_core.errors import NamiError
    from nami_core.train.config import build_flow, read_model_file

    path = tmp_path / "model.json"
    path.write_text(json.dumps({"width": 32, "flow": flow}))
    with pytest.raises((NamiError, ConfigError), match=re.escape(message)):
        _, fields = read_model_file(path)
        build_flow(TrainConfig(**BASE), fields)


def test_a_config_file_flow_section_is_read():
    from nami_core.train.config import build_flow

    flow = build_flow(TrainConfig(**BASE), {"window_ratios": [1, 2, 1], "gamma": 0.25})
    assert flow.window_ratios == (1.0, 2.0, 1.0) and flow.gamma == 0.25


# Options that mean something only beside another (`needs`) or say what another says (`excludes`).
RELATIONS = [
    (dict(lora_alpha=8.0), "--lora-alpha applies only with --lora; give --lora too, or leave --lora-alpha out"),
    (dict(lr=1e-3, lr_schedule="0:1e-4"), "give --lr or --lr-schedule, not both"),
]


@pytest.mark.parametrize("change, message", RELATIONS, ids=["needs", "excludes"])
def test_options_given_without_their_partner_or_beside_their_rival(change, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        TrainConfig(**BASE, **change)


def test_a_constant_lr_is_folded_into_the_schedule_and_copies_keep_it():
    c = TrainConfig(**BASE, lr=1e-3)
    assert c.lr is None and c.lr_schedule == (Phase(0, (1e-3,)),)
    assert replace(c, steps=5).lr_schedule == c.lr_schedule
    assert TrainConfig(**json.loads(json.dumps(c.to_json()))).lr_schedule == c.lr_schedule
