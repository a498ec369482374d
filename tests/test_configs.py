"""Every config dataclass validates in __post_init__ with a message naming the field; specs round-trip."""

from fractions import Fraction

import pytest

from flowblending_accel import Family, FlowBlendingConfig, Schedule
from flowblending_accel.accelerators import (
    AttentionBackend,
    DeepCache,
    FirstBlockCache,
    MagCache,
    OffloadInactive,
    RegionalCompile,
    StepReduction,
    TensorRT,
    parse_accelerator,
    spec_help,
)
from flowblending_accel.core.schedule import Stage


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: FlowBlendingConfig(timing="wall"), r"FlowBlendingConfig.timing='wall'"),
        (lambda: FlowBlendingConfig(small_guidance="half"), r"FlowBlendingConfig.small_guidance='half'"),
        (lambda: FlowBlendingConfig(axis="noise"), r"FlowBlendingConfig.axis='noise'"),
        (lambda: FlowBlendingConfig(schedule=0.4), r"FlowBlendingConfig.schedule must be a string"),
        (lambda: FlowBlendingConfig(schedule="L40-S50"), r"sum to 90"),
        (lambda: FlowBlendingConfig(denoisers=(3,)), r"FlowBlendingConfig.denoisers=\(3,\)"),
        (lambda: StepReduction("lms", 10), r"StepReduction.solver='lms'"),
        (lambda: StepReduction("dpm++", 0), r"StepReduction.steps=0"),
        (lambda: FirstBlockCache(threshold=0), r"FirstBlockCache.threshold=0"),
        (lambda: MagCache(), r"MagCache needs mag_ratios"),
        (lambda: DeepCache(interval=0), r"DeepCache.interval=0"),
        (lambda: AttentionBackend(""), r"AttentionBackend.large"),
        (lambda: TensorRT(precision="int4"), r"TensorRT.precision='int4'"),
        (lambda: OffloadInactive(prefetch_steps=-1), r"OffloadInactive.prefetch_steps=-1"),
        (lambda: Stage("medium", Fraction(1)), r"Stage.model='medium'"),
        (lambda: Stage("large", Fraction(0)), r"Stage.share=0"),
        (lambda: Family("x", ".*", (), ()), r"Family 'x': denoisers"),
        (lambda: Family("x", ".*", ("unet",), (), solver_kind="ode"), r"solver_kind='ode'"),
    ],
)
def test_config_validation_names_the_field(build, message):
    with pytest.raises((ValueError, TypeError), match=message):
        build()


def test_flowblending_config_parses_its_schedule_once():
    config = FlowBlendingConfig("LSL", axis="sigma", denoisers="transformer")
    assert config.schedule == Schedule.parse("L40-S40-L20", "sigma") and config.denoisers == ("transformer",)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("dpm++:10", StepReduction("dpm++", 10)),
        ("fbc:0.2", FirstBlockCache(0.2)),
        ("fbc", FirstBlockCache()),
        ("deepcache:4", DeepCache(4)),
        ("compile", RegionalCompile()),
        ("attn:flash", AttentionBackend("flash")),
        ("trt", TensorRT()),
        ("offload:2", OffloadInactive(2)),
        ("magcache:calibrate", MagCache(calibrate=True)),
    ],
)
def test_spec_strings_and_configs_are_one_path(spec, expected):
    assert parse_accelerator(spec) == expected
    assert parse_accelerator(expected.spec) == expected


@pytest.mark.parametrize(
    "spec, message",
    [
        ("fbc:abc", r"accelerator 'fbc:abc': the value must be a positive threshold, e.g. 'fbc:0.05'"),
        ("dpm++:ten", r"accelerator 'dpm\+\+:ten': the value must be a whole number of steps"),
        ("compile:max", r"'compile' takes no value"),
        ("teacache", r"accelerator 'teacache' is unknown; write one of: dpm\+\+:25"),
    ],
)
def test_bad_specs_name_the_item_and_the_form(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_accelerator(spec)


def test_spec_help_lists_every_registered_form_once():
    forms = spec_help()
    assert forms.count("fbc[:threshold]") == 1 and "offload[:prefetch_steps]" in forms and "tensorrt" in forms
