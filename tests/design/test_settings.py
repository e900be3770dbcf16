"""core.design.settings: every training setting has a label, a help text and a group, and says when it does not
apply."""
from dataclasses import fields

from core.design.config import RunConfig, TrainConfig
from core.design.presets import PRESETS
from core.design.settings import LABELS, SETTINGS, recipe, settings_error


def test_every_train_config_field_has_one_setting_with_help():
    settings = [s for group in SETTINGS.values() for s in group]
    assert sorted(s.field for s in settings) == sorted(f.name for f in fields(TrainConfig))
    assert all(s.label and s.help for s in settings)


def test_a_complaint_names_the_setting_by_its_label():
    values = TrainConfig().to_dict() | {"lr": 20.0}
    assert settings_error(values).startswith("Learning rate: 20.0 is out of range")
    assert settings_error(TrainConfig().to_dict()) is None


def test_a_setting_says_when_it_does_not_apply():
    by_field = {s.field: s for group in SETTINGS.values() for s in group}
    adam = TrainConfig().to_dict() | {"optimizer": "adam"}
    assert by_field["momentum"].unused(adam) == "Only SGD and RMSprop use momentum"
    assert by_field["momentum"].unused(TrainConfig().to_dict() | {"optimizer": "sgd"}) is None
    no_crop = TrainConfig().to_dict() | {"augment": ["flip"]}
    assert by_field["crop_padding"].unused(no_crop) == "Only the crop augmentation uses it"
    assert by_field["step_gamma"].unused(TrainConfig().to_dict() | {"schedule": "step"}) is None


def test_settings_start_from_the_presets_recipe_or_the_defaults():
    assert recipe("resnet10-wide") == RunConfig.from_preset("resnet10-wide").train
    assert recipe(None) == TrainConfig() and recipe("no-such-preset") == TrainConfig()
    assert set(LABELS) == {f.name for f in fields(TrainConfig)}


def test_the_speed_run_settings_are_off_in_every_preset_but_those_made_for_them():
    """Issue 29's settings changed no existing preset: each means what its runs were trained with."""
    for name in PRESETS:
        cfg = RunConfig.from_preset(name)
        t = cfg.train
        tricks = {"whitened stem": cfg.arch.stem.whiten, "alternating flip": "alternating_flip" in t.augment,
                  "linear schedule": t.schedule == "linear", "ramp": t.averaging_ramp,
                  "frozen BN scale": t.freeze_bn_scale, "BN bias lr": t.bn_bias_lr_scale != 1,
                  "shift TTA": t.tta_shift}
        assert all(tricks.values()) if name in ("laptop", "laptop-narrow") else not any(tricks.values()), (name, tricks)


def test_the_averaging_ramp_applies_only_to_an_average():
    by_field = {s.field: s for group in SETTINGS.values() for s in group}
    plain = TrainConfig().to_dict()
    assert by_field["averaging_ramp"].unused(plain) == "Only weight EMA and Lookahead use it"
    assert by_field["averaging_ramp"].unused(plain | {"lookahead": True}) is None
    assert by_field["averaging_ramp"].unused(plain | {"ema_decay": 0.99}) is None
