"""`python -m core` commands for trained runs: predict, evaluate, a submission CSV for an unlabelled test set,
export (fp16, ONNX), time the exports, and import weights trained elsewhere."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from core.cli.common import add_checkpoint, add_tta, emit
from core.deploy.fp16 import export
from core.design.config import RunConfig
from core.design.spec import load_json_file
from core.runs.run import Run


def cmd_predict(args) -> int:
    files = [(f, Path(f)) for f in args.images]
    if args.onnx:  # the device path: onnxruntime, numpy and Pillow, never torch
        from core.deploy.onnx_model import OnnxModel, classify

        model = OnnxModel.load(args.onnx)
        predictions, tta = classify(model, files, tta_flip=args.tta_flip), model.tta_said(args.tta_flip)
    else:
        from core.deploy.predict import Classifier, classify

        classifier = Classifier.load(Run.at(args.run).intact(), args.checkpoint, args.device)
        predictions, tta = classify(classifier, files, tta_flip=args.tta_flip), classifier.tta_said(args.tta_flip)
    emit([p.to_json(args.top) | ({"tta": tta} if p.ok else {}) for p in predictions])
    return 0 if all(p.ok for p in predictions) else 1


def cmd_evaluate(args) -> int:
    from core.data.sources import resolve_data
    from core.deploy.predict import Classifier, evaluate_onnx, evaluate_run

    start = time.perf_counter()
    if args.onnx:
        from core.deploy.onnx_model import OnnxModel

        model = OnnxModel.load(args.onnx)
        report = evaluate_onnx(model, resolve_data(args.data), args.mistakes, args.tta_flip, args.tta_shift)
        where = {"model": args.onnx, "precision": model.meta.get("precision"),
                 "checkpoint": model.meta.get("checkpoint"), "tta": model.tta_said(args.tta_flip, args.tta_shift)}
    else:
        classifier = Classifier.load(Run.at(args.run).intact(), args.checkpoint, args.device)
        report = evaluate_run(classifier, resolve_data(args.data), args.mistakes, args.tta_flip, args.tta_shift)
        where = {"checkpoint": args.checkpoint, "tta": classifier.tta_said(args.tta_flip, args.tta_shift)}
    emit(report.to_json() | where | {"seconds": time.perf_counter() - start})
    return 0


def cmd_submit(args) -> int:
    from core.data.testsets import read_unlabelled
    from core.deploy.predict import Classifier
    from core.deploy.submit import check_destination, predict_test_set, write_submission

    out = Path(args.out)
    check_destination(out)
    test_set = read_unlabelled(args.test_set)
    run = Run.at(args.run).intact()
    classifier = Classifier.load(run, args.checkpoint, args.device)
    submission = predict_test_set(classifier, test_set, args.tta_flip)
    write_submission(submission, out)
    meta = classifier.meta
    checkpoint = {"run": str(run.dir), "tag": args.checkpoint, "epoch": meta.get("epoch"),
                  "eval_acc": meta.get("eval_acc"), "eval_split": meta.get("eval_split")}
    emit({"out": str(out), "test_set": args.test_set} | submission.summary() | {"checkpoint": checkpoint})
    return 0


def cmd_export(args) -> int:
    if args.format == "code":
        from core.deploy.code_export import export_code

        emit(export_code(Run.at(args.run).intact(), args.dest, args.checkpoint))
        return 0
    if args.format == "hub":
        from core.deploy.hub import export_hub

        emit(export_hub(Run.at(args.run).intact(), args.dest, args.checkpoint, args.onnx, args.data))
        return 0
    if args.onnx:
        print("error: --onnx is for --format hub (--format onnx writes the ONNX file alone)", file=sys.stderr)
        return 2
    if args.format == "onnx":
        from core.deploy.jobs import run_job
        from core.deploy.onnx_export import DropTooLarge, ExportError, export_onnx

        def work(on_stage) -> dict:
            return export_onnx(Run.at(args.run).intact(), args.dest, args.checkpoint, args.int8, args.data,
                               args.max_drop, args.calibration_images, on_stage)

        try:
            emit(run_job(Path(args.progress), work) if args.progress else work(lambda stage, fraction: None))
        except DropTooLarge as e:
            raise ExportError(f"{e}. Export fp32, or allow more with --max-drop") from None
        return 0
    if args.int8:
        print("error: --int8 is for --format onnx; the safetensors export is fp16 (or --fp32)", file=sys.stderr)
        return 2
    dest = export(Run.at(args.run).intact(), Run.at(args.dest), half=not args.fp32)
    emit({"exported": str(dest.dir), "files": sorted(str(p.relative_to(dest.dir)) for p in dest.dir.rglob("*")
                                                     if p.is_file())})
    return 0


def cmd_bench_export(args) -> int:
    from core.measure.latency import bench_export

    emit(bench_export(Run.at(args.run).intact(), args.checkpoint, args.data, args.seconds))
    return 0


def cmd_import(args) -> int:
    from core.deploy.hub import import_hub, is_hub_folder
    from core.deploy.importer import NORMALIZATIONS, import_weights

    if Path(args.weights).suffix.lower() == ".zip":  # a run.zip from an exported train.py
        from core.deploy.run_zip import import_run_zip

        run = import_run_zip(Path(args.weights), args.weights, args.run_dir)
        summary = run.summary()
        emit({"imported": str(run.dir), "from": args.weights, "params": summary["params"],
              "epochs": summary["epochs_done"], "best_acc": summary["best_acc"]})
        return 0
    if is_hub_folder(Path(args.weights)):
        run = import_hub(args.weights, args.run_dir)
        emit({"imported": str(run.dir), "from": args.weights, "params": run.summary()["params"]})
        return 0
    if Path(args.weights).is_dir():
        print(f"error: {args.weights}: a folder, but not one `export --format hub` wrote (it needs model.safetensors "
              f"and config.json); give a .pt file or such a folder", file=sys.stderr)
        return 2
    if not args.design:
        print("error: --design SPEC.json is needed for a .pt file: the network its weights belong to",
              file=sys.stderr)
        return 2
    design = RunConfig.from_dict(load_json_file(args.design))
    if args.allow_over_budget:
        design = RunConfig.from_dict(design.to_dict() | {"allow_over_budget": True})
    mean, std = NORMALIZATIONS[args.normalization]
    mean, std = tuple(args.mean or mean), tuple(args.std or std)
    run = import_weights(Path(args.weights), args.weights, design, args.run_dir, mean, std)
    emit({"imported": str(run.dir), "from": args.weights, "params": run.summary()["params"],
          "mean": list(mean), "std": list(std)})
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("predict", help="classify image files with a run's checkpoint or an exported ONNX model "
                                       "(JSON per file)")
    add_checkpoint(p, onnx=True)
    p.add_argument("--top", type=int, default=3, help="how many classes to list per image")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="accuracy, per-class accuracy, confusion matrix and worst mistakes, of a "
                                        "run's checkpoint or an exported ONNX model (computed by onnxruntime; reading "
                                        "the test set still needs torch)")
    add_checkpoint(p, onnx=True)
    p.add_argument("--data", help="a CIFAR-10 copy (its test split) or a folder/.zip/.tar.gz of class folders")
    p.add_argument("--mistakes", type=int, default=20, help="how many of the most confident mistakes to list")
    p.add_argument("--tta-shift", action="store_const", const=True, default=None,
                   help="also average with the image shifted a pixel up-left and down-right (6 views with the flip; "
                        "default: as the run was tested)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("submit", help="a Kaggle submission: the class of every image of an unlabelled test set "
                                      "(the course pickle, .npy/.npz, or a folder/zip of images) as ID,Labels CSV")
    p.add_argument("run", metavar="runs/NAME")
    p.add_argument("test_set", metavar="TEST_SET", help="the course's pickle (b'data' as (N, 3072) CIFAR rows or "
                                                        "(N, 32, 32, 3), and b'ids'), a .npy/.npz of (N, 32, 32, 3) "
                                                        "or (N, 3, 32, 32) uint8, or a folder/.zip of images (ID = "
                                                        "file name without its suffix)")
    p.add_argument("--out", required=True, metavar="submission.csv")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--device", default="cpu")
    add_tta(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("export", help="a finished run to ship: record + best checkpoint in fp16 (safetensors), "
                                      "one verified ONNX file for devices (--format onnx), or a folder for the "
                                      "Hugging Face Hub with a model card (--format hub), or code a grader runs with "
                                      "torch alone: model.py, weights.pt, train.py, a notebook (--format code)")
    p.add_argument("run", metavar="runs/NAME")
    p.add_argument("dest", metavar="runs/NEW|OUT.onnx|OUT_DIR")
    p.add_argument("--format", choices=("safetensors", "onnx", "hub", "code"), default="safetensors")
    p.add_argument("--onnx", action="store_true", help="hub: put the verified ONNX file in the folder too")
    p.add_argument("--fp32", action="store_true", help="safetensors: keep fp32 weights")
    p.add_argument("--int8", action="store_true", help="onnx: int8 by static quantization, calibrated on training "
                                                       "images")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best", help="onnx, hub, code: which checkpoint")
    p.add_argument("--data", help="onnx: CIFAR-10 copy to verify on (its test split) and calibrate int8 with (its "
                                  "training split); default the run's own data if it is here, else the built-in slice")
    p.add_argument("--max-drop", type=float, default=1.0, metavar="POINTS",
                   help="onnx --int8: refuse if int8 loses more accuracy points than this against fp32 (default 1)")
    p.add_argument("--calibration-images", type=int, default=1024, help="onnx --int8: how many training images")
    p.add_argument("--progress", metavar="JOB.json", help="onnx: write each stage and the outcome to this JSON file "
                                                          "(how the app follows an export in the background)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench-export", help="CPU latency at batch 1 and 256: PyTorch, ONNX fp32, ONNX int8")
    p.add_argument("run", metavar="runs/NAME")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--data", help="images to time and calibrate int8 with (default as for export)")
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per batch size (after warm-up)")
    p.set_defaults(func=cmd_bench_export)

    p = sub.add_parser("import", help="a PyTorch state_dict (.pt) trained elsewhere, as a run of a given design; "
                                      "a folder `export --format hub` wrote; or the run.zip of an exported train.py, "
                                      "with its curves")
    p.add_argument("weights", metavar="WEIGHTS.pt|HUB_DIR|RUN.zip")
    p.add_argument("--design", metavar="SPEC.json", help="for a .pt file: the network's design, a spec or run config")
    p.add_argument("--run-dir", required=True, metavar="runs/NAME", help="the new run")
    p.add_argument("--normalization", choices=("cifar10", "kuangliu", "none"), default="cifar10",
                   help="the input normalisation the weights were trained with: CIFAR-10's mean and std (default), "
                        "kuangliu pytorch-cifar's (std 0.2023, 0.1994, 0.2010), or none (plain [0, 1] pixels)")
    p.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"), help="or give the mean on [0, 1] pixels")
    p.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"), help="and the std")
    p.add_argument("--allow-over-budget", action="store_true", help="import a design over its parameter budget")
    p.set_defaults(func=cmd_import)
