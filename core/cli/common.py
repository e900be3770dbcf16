"""What the commands share: JSON output, a design from --preset or --config, the checkpoint options."""
from __future__ import annotations

import argparse
import json

from core.design.config import RunConfig
from core.design.spec import load_json_file

def emit(obj) -> None:
    print(json.dumps(obj, indent=2))


def config_from_args(args) -> RunConfig:
    if args.preset:
        return RunConfig.from_preset(args.preset)
    return RunConfig.from_dict(load_json_file(args.config))


def add_source(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--preset", help="a preset name (see `python -m core presets`)")
    g.add_argument("--config", metavar="FILE.json", help="a run config or a bare architecture spec")


def add_checkpoint(p: argparse.ArgumentParser, onnx: bool = False) -> None:
    if onnx:
        g = p.add_mutually_exclusive_group(required=True)
        g.add_argument("--run", metavar="runs/NAME")
        g.add_argument("--onnx", metavar="MODEL.onnx", help="a model exported with `export --format onnx` "
                                                            "(runs with onnxruntime alone, no torch)")
    else:
        p.add_argument("--run", required=True, metavar="runs/NAME")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--device", default="cpu")
    add_tta(p)


def add_tta(p: argparse.ArgumentParser) -> None:
    """--tta-flip / --no-tta; neither: the run's own test-time augmentation (args.tta_flip None)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--tta-flip", dest="tta_flip", action="store_const", const=True, default=None,
                   help="average each image's prediction with its mirror's (default: as the run was tested)")
    g.add_argument("--no-tta", dest="tta_flip", action="store_const", const=False,
                   help="no test-time augmentation, even where the run was tested with it")
