"""The seed projects' table of a run config: the rows a paper needs, in words."""
from core.design.config import RunConfig
from core.design.presets import get_preset
from core.design.table import hyperparameters


def table_of(preset: str) -> dict[str, str]:
    p = get_preset(preset)
    return hyperparameters(RunConfig.from_dict({"arch": p["arch"], "train": p["train"], "preset": preset}))


def test_the_table_names_the_activation_the_head_and_the_test_time_views():
    laptop, resnet20 = table_of("laptop"), table_of("resnet20")
    assert (laptop["Activation"], laptop["Test-time augmentation"]) == ("GELU", "flip and 1-pixel shifts (6 views)")
    assert (resnet20["Activation"], resnet20["Test-time augmentation"]) == ("ReLU", "none")
    assert (resnet20["Pool size"], resnet20["Logit scale"]) == ("8 (average)", "1")
