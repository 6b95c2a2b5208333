"""The `cifar-mlp` command: a thin layer of argument parsing over the package's functions.

Problems with the user's input arrive as UserError and are printed as one line (exit code 2), never a traceback.
"""

import argparse
import signal
import sys
from pathlib import Path

from cifar_mlp import UserError, __version__
from cifar_mlp.config import preset_names


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py (default: $CIFAR10_DIR, else ./data)")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading a missing dataset")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where to compute (default auto: CUDA if any)")


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="seed", help=f"preset ({', '.join(preset_names())}) or a TOML file path")
    p.add_argument("--run-dir", required=True, help="output folder of the run")
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, value in TOML syntax, e.g. --set model.widths=[1024,512]")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from checkpoints/last.pt")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar: one line per epoch")
    add_data_args(p)


def resolve_config(args):
    """Preset or file (or, with --resume, the run's saved config), then the flag and --set overrides."""
    from cifar_mlp import config
    from cifar_mlp.train import resume_config

    overrides = list(args.set)
    for flag, key in (("epochs", "train.epochs"), ("lr", "optim.lr"), ("batch_size", "train.batch_size"),
                      ("seed", "train.seed"), ("device", "train.device")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)!r}".replace("'", '"'))
    raw = resume_config(args.run_dir) if args.resume else config.read_toml(args.config)
    return config.apply_overrides(raw, overrides)


def cmd_data_check(args) -> None:
    from cifar_mlp.data import CLASSES, SPLIT_NAMES, class_counts, load_cifar10, make_splits, resolve_device

    device = resolve_device(args.device or "auto")
    data = load_cifar10(args.data_dir, not args.no_download)
    splits = make_splits(data, args.val_per_class, args.split_seed, device)
    print(f"loaded {data.folder} in {data.load_seconds:.2f}s; splits held on {device}")
    print(f"{'split':<11}{'images':>8}  " + " ".join(f"{c[:8]:>8}" for c in CLASSES))
    for name in SPLIT_NAMES:
        counts = class_counts(splits[name].labels.cpu())
        print(f"{name:<11}{sum(counts):>8}  " + " ".join(f"{n:>8}" for n in counts))
    print("train-split mean (R,G,B): " + ", ".join(f"{m:.4f}" for m in splits.mean))
    print("train-split std  (R,G,B): " + ", ".join(f"{s:.4f}" for s in splits.std))
    print(f"split seed {args.split_seed}, fingerprint {splits.info['fingerprint']}")


def cmd_train(args) -> None:
    from cifar_mlp.train import train

    history = train(resolve_config(args), args.run_dir, args.data_dir, not args.no_download, args.resume,
                    args.overwrite, args.quiet)
    print(done_line(history, args.run_dir))


def done_line(history: list[dict], run_dir) -> str:
    best = min(history, key=lambda r: r["val_loss"])
    return (f"done: {len(history)} epochs in {sum(r['epoch_time_s'] for r in history):.1f}s of training; lowest "
            f"validation loss {best['val_loss']:.4f} at epoch {best['epoch']} (accuracy {best['val_acc']:.4f}); "
            f"files in {run_dir}")


def add_evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default="best", help="best, last, or a checkpoint path (default best)")
    p.add_argument("--splits", default="train,validation,test", help="comma-separated subset of the three splits")
    p.add_argument("--tta", choices=["none", "flip"], default="none",
                   help="test-time augmentation: flip averages the predictions of each image and its mirror")


def cmd_evaluate(args) -> None:
    from cifar_mlp.evaluate import evaluate_run

    evaluate_run(args.run_dir, args.checkpoint, [s.strip() for s in args.splits.split(",") if s.strip()],
                 args.out, args.data_dir, args.device or "auto", not args.no_download, args.tta == "flip",
                 recalibrate_norm=args.recalibrate_norm)


def run_job(cfg, run_dir, data=None, data_dir=None, allow_download: bool = True, resume: bool = False,
            overwrite: bool = False, quiet: bool = False, which: str = "best", tta_flip: bool = False,
            on_epoch=None, show_metrics: bool = True) -> tuple[list[dict], dict, Path, Path]:
    """The main job, for `cifar-mlp run` and every sweep trial: train, evaluate a checkpoint on all three splits,
    write the report, holding the run directory throughout. Without `data`, the cheap refusals (an existing run,
    a model too large) come before the dataset loads. Returns the history, metrics.json and the report's paths."""
    from cifar_mlp import rundir
    from cifar_mlp.data import load_cifar10, resolve_device
    from cifar_mlp.evaluate import evaluate_run
    from cifar_mlp.report import write_report
    from cifar_mlp.train import check_memory, train

    with rundir.locked(run_dir):
        if data is None:
            rundir.prepare(Path(run_dir), resume, overwrite)
            check_memory(cfg, resolve_device(cfg.train.device))
            data = load_cifar10(data_dir, allow_download)
        history = train(cfg, run_dir, data=data, resume=resume, overwrite=overwrite, quiet=quiet, on_epoch=on_epoch)
        print(done_line(history, run_dir))
        metrics = evaluate_run(run_dir, which, device=cfg.train.device, tta_flip=tta_flip, data=data,
                               quiet=not show_metrics)
        md, page = write_report(run_dir)
    return history, metrics, md, page


def cmd_run(args) -> None:
    """The main job: train, evaluate the best checkpoint on all three splits, write the report."""
    *_, md, page = run_job(resolve_config(args), args.run_dir, data_dir=args.data_dir,
                           allow_download=not args.no_download, resume=args.resume, overwrite=args.overwrite,
                           quiet=args.quiet, which=args.checkpoint, tta_flip=args.tta == "flip")
    print(f"report: {md} and {page}")


def cmd_report(args) -> None:
    from cifar_mlp.report import write_report

    md, page = write_report(args.run_dir)
    print(f"report: {md} and {page}")


def cmd_compare(args) -> None:
    from cifar_mlp.report import compare

    print(compare(args.run_dirs, Path(args.out)))


def cmd_predict(args) -> None:
    import json

    from cifar_mlp.predict import Classifier, classify_files

    if args.top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {args.top_k}")
    classifier = Classifier.from_checkpoint(args.checkpoint, args.device or "cpu")
    results, errors = classify_files(classifier, args.inputs, min(args.top_k, len(classifier.classes)))
    if args.json:
        print(json.dumps({"checkpoint": args.checkpoint, "predictions": results, "errors": errors}, indent=2))
    else:
        for r in results:
            print(f"{r['path']}: " + ", ".join(f"{t['class']} {t['probability']:.3f}" for t in r["top"]))
    for e in errors:
        print(f"cifar-mlp: error: {e['error']}", file=sys.stderr)
    if errors or not results:
        if not errors:
            print("cifar-mlp: error: no image files found in the given paths", file=sys.stderr)
        sys.exit(1)


def cmd_robustness(args) -> None:
    from cifar_mlp.robustness import robustness

    transforms = [t.strip() for t in args.transforms.split(",") if t.strip()] if args.transforms else None
    _, summaries = robustness(args.run_dirs, args.out, transforms, args.data_dir, args.device or "auto",
                              not args.no_download)
    for run, s in summaries.items():
        print(f"{run}: clean {100 * s['clean']:.1f}%, mean over the transforms {100 * s['mean_corrupted']:.1f}%, "
              f"costliest {s['worst']} {s['worst_strength']:g} ({100 * s['worst_accuracy']:.1f}%)")
    print(f"curves: {args.out}/robustness.csv, robustness.png and robustness.md")


def cmd_export(args) -> None:
    from cifar_mlp.export import export_onnx

    print(f"exported: {export_onnx(args.source, args.out)}")


def cmd_sweep(args) -> None:
    from cifar_mlp.sweep import sweep

    try:
        summary = sweep(args.spec, args.study_dir, args.storage, args.workers, args.n_trials, args.data_dir,
                        args.device, not args.no_download, args.quiet)
    except KeyboardInterrupt:
        print("cifar-mlp: interrupted; rerun the same command to finish the study (completed trials are kept, "
              "interrupted ones resume from their last epoch)", file=sys.stderr)
        sys.exit(130)
    print(summary.read_text())
    print(f"summary: {summary} and {summary.with_suffix('.html')}; trials: {summary.parent / 'trials.csv'}")


def cmd_sweep_report(args) -> None:
    from cifar_mlp.sweep_report import rebuild

    summary = rebuild(args.study_dir, args.storage, args.out, args.spec)
    print(f"summary: {summary} and {summary.with_suffix('.html')}; trials: {summary.parent / 'trials.csv'}")


def cmd_claims(args) -> None:
    from cifar_mlp.claims import claims

    try:
        path, found = claims(args.study_dir, args.budget, args.storage, args.workers, args.out, args.data_dir,
                             args.device, not args.no_download, args.quiet)
    except KeyboardInterrupt:
        print("cifar-mlp: interrupted; rerun the same command to finish the studies (finished runs are kept, "
              "interrupted ones resume from their last epoch)", file=sys.stderr)
        sys.exit(130)
    for f in found:
        print(f"claim {f.number}: {f.verdict}")
    print(f"report: {path} and {path.with_suffix('.html')}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cifar-mlp", description="Fully connected image classifiers for CIFAR-10.")
    parser.add_argument("--version", action="version", version=f"cifar-mlp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("data-check", help="load CIFAR-10, split it and print what was loaded")
    p.add_argument("--val-per-class", type=int, default=500)
    p.add_argument("--split-seed", type=int, default=0)
    add_data_args(p)
    p.set_defaults(func=cmd_data_check)

    p = sub.add_parser("train", help="train a model into a run directory")
    add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="metrics, confusion matrices and plots of a trained run")
    p.add_argument("run_dir", help="a run directory written by cifar-mlp train")
    p.add_argument("--out", help="output folder (default: the run directory)")
    add_evaluate_args(p)
    p.add_argument("--recalibrate-norm", type=int, default=0, metavar="N",
                   help="first recompute the checkpoint's BatchNorm statistics from N train images with dropout off, "
                        "as train.recalibrate_norm = N does after each epoch (default 0: as trained)")
    add_data_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("run", help="the main job: train, evaluate and write the report")
    add_train_args(p)
    add_evaluate_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="rebuild report.md and report.html from a finished run")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", help="one table and one loss plot for several runs")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--out", default=".", help="folder for compare.png (default: current folder)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("predict", help="classify image files or folders with a trained model")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--checkpoint", required=True,
                   help="a checkpoint file, a run directory (uses its best.pt) or an ONNX file from cifar-mlp export")
    p.add_argument("--top-k", type=int, default=3, help="how many classes to print per image (default 3)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("robustness", help="test accuracy of runs under rotations, shifts, noise, blur, ...")
    p.add_argument("run_dirs", nargs="+", metavar="RUN")
    p.add_argument("--out", required=True, help="folder for robustness.csv, .png and .md")
    p.add_argument("--transforms", help="comma-separated subset of: rotation, translation, gaussian_noise, "
                                        "gaussian_blur, brightness, contrast, jpeg, mirror (default: all)")
    add_data_args(p)
    p.set_defaults(func=cmd_robustness)

    p = sub.add_parser("export", help="write a trained model as an ONNX file (uint8 images in, probabilities out)")
    p.add_argument("source", metavar="RUN_OR_CHECKPOINT", help="a run directory (its best.pt) or a checkpoint file")
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--out", required=True, help="the file to write, e.g. model.onnx")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("sweep", help="run a study of many runs on Optuna (grid, tpe or random), resumable")
    p.add_argument("spec", help="the study's TOML spec (see studies/)")
    p.add_argument("--study-dir", required=True, help="folder for the runs, the embedded storage and the summary")
    p.add_argument("--storage", help="a database URL shared by workers on many machines, e.g. "
                                     "postgresql://user:password@host/db (default: a journal file in --study-dir)")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine, sharing its cores")
    p.add_argument("--n-trials", type=int, help="points to sample (tpe, random), overriding the spec's n_trials")
    p.add_argument("--quiet", action="store_true", help="one line per trial, none per epoch")
    add_data_args(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("sweep-report", help="rebuild a sweep's trials.csv and summary from its storage")
    p.add_argument("study_dir")
    p.add_argument("--storage", help="the database URL, for a study that is not in the folder's journal file")
    p.add_argument("--out", help="write trials.csv, summary.md/.html and figures there (default: the study folder)")
    p.add_argument("--spec", help="take the spec from this file instead of the one recorded, e.g. for notes added "
                                  "since; it must describe the same study")
    p.set_defaults(func=cmd_sweep_report)

    p = sub.add_parser("claims", help="test each of the seed's conclusions by studies, with computed verdicts")
    p.add_argument("--study-dir", required=True, help="folder for the studies (one sweep folder each), reused on rerun")
    p.add_argument("--budget", choices=["small", "full"], default="small",
                   help="small: a preview, 24 minutes on 2 CPU cores with native bf16; full: 2 h 34 there (both "
                        "measured), about 6 h 40 in float32 on 2 AVX2-only cores (estimated from measured runs)")
    p.add_argument("--storage", help="a database URL shared by workers on many machines (see cifar-mlp sweep)")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine, sharing its cores")
    p.add_argument("--out", help="folder for claims.md, claims.html and their figures (default: --study-dir)")
    p.add_argument("--quiet", action="store_true", help="one line per trial, none per epoch")
    add_data_args(p)
    p.set_defaults(func=cmd_claims)
    return parser


def interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)  # a kill finishes like Ctrl-C: plot written, checkpoints intact
    try:
        args.func(args)
    except UserError as e:
        print(f"cifar-mlp: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("cifar-mlp: interrupted; a run keeps its last completed epoch: continue it with --resume",
              file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
