"""The report of a finished run (report.md and a self-contained report.html), built only from the run's files.

Every conclusion is derived from measured figures: history.csv (diagnosis), metrics.json (results), config.json
and environment.json (set-up). Where a question needs an experiment the run did not make, the report says so.
"""

import base64
import html
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from cifar_mlp import UserError, plots, rundir
from cifar_mlp.config import from_dict
from cifar_mlp.model import MLP, describe, parameter_count
from cifar_mlp.networks import build as build_model

# Thresholds of the automatic diagnosis (written into every report).
TREND_FRACTION = 0.10  # the "end" of training: the last 10% of epochs (at least 3)
IMPROVING_SLOPE = -0.001  # validation loss still falling faster than 0.1% of its value per epoch: underfitting
RISE_TOLERANCE = 0.02  # final validation loss 2% or more above its minimum, with training loss still falling: overfit
GAP_THRESHOLD = 0.10  # train accuracy (eval mode) this far above held-out accuracy: a generalisation gap
SEED_FIGURES = {"accuracy": 0.50, "recall": (0.32, 0.65), "f1": (0.36, 0.63)}  # what "Exercise 5" reports for test
PUBLISHED_CLAIMS = Path(__file__).resolve().parents[2] / "docs" / "claims"  # `cifar-mlp claims --out` in a checkout
CLAIM_TOPICS = {1: "the MLP is \"worse than the convolutional models\"",
                2: "\"more layers don't improve the model\", for \"a poor propagation of the gradient\"",
                3: "\"the only reasonable way to improve the model is to add more epochs\"",
                4: "there is \"no notable overfitting\" at 80 epochs, nor with more epochs",
                5: "the MLP \"will generalize bad to new data\" such as rotated images, where a CNN would not"}


@dataclass
class Diagnosis:
    verdict: str  # underfitting | overfitting | converged
    best_epoch: int
    epochs: int
    loss_gap: float  # validation minus train loss at the last epoch
    acc_gap: float  # train minus validation accuracy at the last epoch
    trend_epochs: int
    relative_slope: float  # validation-loss slope over the trend window, per epoch, relative to its mean
    rise: float  # final validation loss relative to its minimum, minus 1
    train_falling: bool  # training loss lower at the end than at the best epoch
    sentence: str


def diagnose(history: list[dict], schedule: str = "none") -> Diagnosis:
    """The verdict from the validation-loss curve; `schedule` tells whether the learning rate decayed to zero."""
    epochs = len(history)
    val = np.array([r["val_loss"] for r in history])
    train = np.array([r["train_loss"] for r in history])
    best = int(np.argmin(val))
    window = min(epochs, max(3, math.ceil(TREND_FRACTION * epochs)))
    tail = val[-window:]
    slope = np.polyfit(np.arange(window), tail, 1)[0] if window >= 2 else 0.0
    relative_slope = float(slope / tail.mean()) if tail.mean() > 0 else 0.0  # a loss of exactly 0: memorised
    rise = float(val[-1] / val[best] - 1) if val[best] > 0 else 0.0
    train_falling = bool(train[-1] < train[best])
    last = history[-1]
    loss_gap, acc_gap = last["val_loss"] - last["train_loss"], last["train_acc"] - last["val_acc"]
    if rise >= RISE_TOLERANCE and train_falling and best < epochs - 1:
        verdict = "overfitting"
        sentence = (f"Overfitting: the validation loss has risen since epoch {best + 1} (it ends {100 * rise:.1f}% "
                    f"above its minimum of {val[best]:.4f}) while the training loss kept falling "
                    f"({train[best]:.4f} -> {train[-1]:.4f}); the best checkpoint is the one of epoch {best + 1}.")
    elif relative_slope < IMPROVING_SLOPE:
        verdict = "underfitting"
        sentence = (f"Underfitting: the validation loss was still falling by {-100 * relative_slope:.2f}% per epoch "
                    f"over the last {window} epochs and is lowest at the final epoch {best + 1}; ")
        if schedule == "none":
            sentence += "more epochs or a larger learning rate would help."
        else:
            sentence += (f"part of that fall comes from the {schedule} schedule's decay of the learning rate to zero, "
                         "so whether a longer schedule would help needs a longer run, which this run does not measure.")
    else:
        verdict = "converged"
        sentence = (f"Converged: over the last {window} epochs the validation loss changed by "
                    f"{100 * relative_slope:+.2f}% per epoch and ends {100 * rise:.1f}% above its minimum "
                    f"(epoch {best + 1}); more epochs of this recipe would not help.")
    return Diagnosis(verdict, best + 1, epochs, loss_gap, acc_gap, window, relative_slope, rise, train_falling,
                     sentence)


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def augmentations(cfg) -> list[str]:
    mixing = [f"{cfg.data.mix} (alpha {cfg.data.mix_alpha})"] if cfg.data.mix != "none" else []
    words = {"crop": f"translations by up to {cfg.data.translate} pixels",
             "affine": f"rotations by up to {cfg.data.rotate:g} degrees and changes of scale by up to "
                       f"{100 * cfg.data.zoom:g}%"}
    applied = [*(words.get(kind, kind) for kind in cfg.data.augment), *mixing]
    clean = [f"none in the last {cfg.data.clean_epochs} epochs"] if applied and cfg.data.clean_epochs else []
    return applied + clean


def input_map(cfg) -> str:
    """The fixed first layer fitted on the train split, in words ("" when there is none)."""
    m = cfg.model
    return {"none": "", "zca": "ZCA whitening", "pca": f"PCA whitening to {m.whitening_dims} components",
            "project": f"a projection onto the top {m.whitening_dims} principal components (not whitened)"
            }[m.whitening]


def preprocessing(cfg) -> str:
    """What happens to the pixels before the first trained layer, in words."""
    steps = ["normalised per channel with the train split's mean and std"]
    if cfg.model.image_norm:
        steps.append("each image standardised over its 3,072 values (in the model)")
    if fixed_map := input_map(cfg):
        steps.append(f"{fixed_map}, fitted on the train split and fixed")
    return ", then ".join(steps)


def model_sentence(model) -> str:
    if not isinstance(model, MLP | nn.ModuleList):
        return (f"Model: the comparator, a small convolutional network with {parameter_count(model):,} parameters: "
                "not fully connected, it is here only to measure the seed's claims about convolutional models. A "
                "fixed first layer whitens 2x2 patches (fitted on the train split), then three blocks of "
                "convolution, max pooling, BatchNorm and GELU, a global max pool and a linear head to 10 logits.")
    if isinstance(model, MLP):
        return (f"Model: a fully connected network with {parameter_count(model):,} parameters; it outputs 10 "
                "logits, softmax gives the probabilities, and training minimises the cross-entropy of the logits.")
    return (f"Model: an ensemble of {len(model)} fully connected networks, each with {parameter_count(model[0]):,} "
            "parameters and the layers below, trained side by side but independently: training minimises each "
            "network's own cross-entropy, and the ensemble predicts the mean of their softmax probabilities.")


def pretraining_sentence(cfg) -> str:
    """How the first hidden layer started, where it was pretrained ("" where it started at random)."""
    m = cfg.model
    if not m.pretrain_epochs:
        return ""
    whose = "each network's" if m.members > 1 else "the network's"
    return (f" Before training, {whose} first hidden layer took the weights of a zero-bias autoencoder trained for "
            f"{m.pretrain_epochs} epochs on the train images as that layer sees them (threshold "
            f"{m.pretrain_threshold:g}; model.pretrain_epochs); its time is counted in the first epoch's.")


def read_run(run_dir: Path) -> dict:
    """The files a report needs; a clear error if the run is unfinished or unevaluated."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist")
    return {"config": rundir.read_config(run_dir), "history": rundir.read_history(run_dir),
            "metrics": rundir.read_metrics(run_dir), "environment": rundir.read_environment(run_dir),
            "robustness": rundir.read_robustness(run_dir)}


def table(header, rows) -> tuple:
    return ("table", list(header), [list(map(str, r)) for r in rows])


def build(run_dir: Path) -> list[tuple]:
    """The report as a list of blocks: ("h1"|"h2"|"p"|"code", text), ("table", header, rows), ("img", file, alt)."""
    run = read_run(run_dir)
    cfg, history, metrics, env = from_dict(run["config"]), run["history"], run["metrics"], run["environment"]
    splits = metrics["splits"]
    diag = diagnose(history, cfg.optim.schedule)
    model = build_model(cfg.model)
    train_seconds = sum(r["epoch_time_s"] for r in history)
    split = metrics["split"]
    blocks = [("h1", f"CIFAR-10 MLP report: {Path(run_dir).name}")]

    blocks += [
        ("h2", "Set-up"),
        ("p", f"Data: CIFAR-10, {split['sizes']['train']:,} train / {split['sizes']['validation']:,} validation "
              f"(stratified, {split['val_per_class']} per class, split seed {split['split_seed']}, fingerprint "
              f"{split['fingerprint']}) / {split['sizes']['test']:,} official test images. Preprocessing: pixels "
              f"scaled to [0, 1], then {preprocessing(cfg)}; augmentation: {', '.join(augmentations(cfg)) or 'none'}."),
        ("p", model_sentence(model) + pretraining_sentence(cfg)),
        ("code", describe(model[0] if isinstance(model, nn.ModuleList) else model)),
        table(["hyperparameter", "value"],
              [[f"{section}.{k}", v] for section, values in run["config"].items() for k, v in values.items()]),
        ("p", f"Hardware: {env['gpu'] or env['cpu']} ({env['device']}, {env['torch_threads']} threads), torch "
              f"{env['torch']}, Python {env['python']}, cifar-mlp {env['cifar_mlp']}, git commit "
              f"{env['git_commit'] or 'unknown'}. Training took {train_seconds:.1f} s for {len(history)} epochs; "
              f"evaluation took {metrics['seconds']:.1f} s."),
    ]

    last = history[-1]
    blocks += [
        ("h2", "Training"),
        ("img", "loss_plot.png", "train and validation loss and accuracy per epoch"),
        table(["figure", "value"], [
            ["epoch of lowest validation loss", f"{diag.best_epoch} of {diag.epochs}"],
            ["final train / validation loss", f"{last['train_loss']:.4f} / {last['val_loss']:.4f}"],
            ["final loss gap (validation - train)", f"{diag.loss_gap:+.4f}"],
            ["final train / validation accuracy", f"{pct(last['train_acc'])} / {pct(last['val_acc'])}"],
            ["final accuracy gap (train - validation)", f"{100 * diag.acc_gap:+.1f} points"],
            [f"validation-loss trend, last {diag.trend_epochs} epochs", f"{100 * diag.relative_slope:+.3f}% per epoch"],
            ["final validation loss above its minimum", f"{100 * diag.rise:.2f}%"],
        ]),
        ("p", f"Diagnosis: {diag.sentence}"),
        ("p", f"Thresholds: underfitting when the validation loss falls faster than {-100 * IMPROVING_SLOPE:.1f}% "
              f"per epoch over the last {100 * TREND_FRACTION:.0f}% of epochs (at least 3); overfitting when the "
              f"final validation loss is {100 * RISE_TOLERANCE:.0f}% or more above its minimum while the training "
              "loss is lower than at that minimum; converged otherwise. A train accuracy (eval mode) more than "
              f"{100 * GAP_THRESHOLD:.0f} points above the held-out accuracy is reported as a generalisation gap. "
              "Training loss and accuracy are running "
              "means over each epoch in train mode (dropout on), so they understate the final model on the train "
              "split; the evaluation below uses eval mode."),
    ]

    recalibrated = metrics.get("recalibrate_norm")
    blocks += [("h2", "Results"), ("p", f"Checkpoint: {metrics['checkpoint']} (epoch {metrics['epoch']})"
                                        + (", with horizontal-flip test-time augmentation" if metrics.get("tta_flip")
                                           else "")
                                        + (f", with its BatchNorm statistics recomputed from {recalibrated} train "
                                           "images" if recalibrated else "") + ".")]
    columns = ["accuracy", "top2_accuracy", "nll", "ece", "macro_precision", "macro_recall", "macro_f1-score"]
    blocks.append(table(["split", "images", *columns],
                        [[s, v["n"], *(f"{v[c]:.4f}" for c in columns)] for s, v in splits.items()]))
    test = splits.get("test")
    if test:
        per_class = test["per_class"]
        ranked = sorted(per_class, key=lambda c: per_class[c]["f1-score"])
        blocks += [
            ("h2", "Test set per class"),
            table(["class", "precision", "recall", "f1-score", "support"],
                  [[c, *(f"{per_class[c][k]:.4f}" for k in ("precision", "recall", "f1-score")),
                    int(per_class[c]["support"])] for c in per_class]),
            ("p", f"Best class: {ranked[-1]} (F1 {per_class[ranked[-1]]['f1-score']:.3f}); worst: {ranked[0]} "
                  f"(F1 {per_class[ranked[0]]['f1-score']:.3f})."),
            table(["true class", "predicted as", "test images"],
                  [[p["true"], p["predicted"], p["count"]] for p in test["confused_pairs"]]),
        ]
    blocks.append(("h2", "Figures"))
    for s in splits:
        blocks += [("img", f"metrics_{s}.png", f"{s} per-class metrics"),
                   ("img", f"confusion_matrix_{s}.png", f"{s} confusion matrix"),
                   ("img", f"calibration_{s}.png", f"{s} reliability diagram")]
    if test:
        blocks.append(("img", "misclassified_test.png", "most confidently wrong test images"))
    blocks += conclusions(diag, splits, cfg, run["robustness"], published_claims())
    if test:
        blocks += seed_comparison(test)
    return blocks


def ensemble_gain(held_out: dict, name: str, mutual_weight: float) -> str:
    """What averaging an ensemble's members bought, in words ("" for a single network)."""
    members = held_out.get("member_accuracy")
    if not members:
        return ""
    how = "each also learning from the others' predictions" if mutual_weight else "trained independently"
    return (f" It is an ensemble of {len(members)} networks {how}, which alone classify "
            f"{pct(min(members))} to {pct(max(members))} of the {name} images correctly: averaging their "
            f"probabilities adds {100 * (held_out['accuracy'] - sum(members) / len(members)):.1f} points to their "
            "mean.")


def published_claims(folder: Path = PUBLISHED_CLAIMS) -> dict | None:
    """The verdicts of the claims study published with the repository, if this is a checkout that has them."""
    path = Path(folder) / "verdicts.json"
    if not path.is_file():
        return None
    return rundir.read_json(path, f"cifar-mlp claims --budget full --out {folder}", ("budget", "claims"))


def across_runs(numbers: list[int], published: dict | None) -> str:
    """A sentence quoting the claims study's verdicts on the seed's own answer to a question."""
    if not published:
        return (" Across runs, the seed's answer (that " + " and that ".join(CLAIM_TOPICS[n] for n in numbers)
                + ") is tested by `cifar-mlp claims`, whose verdicts the repository publishes in "
                "docs/claims/claims.md.")
    link = f"[docs/claims/claims.md]({(PUBLISHED_CLAIMS / 'claims.md').as_uri()})"
    verdicts = "; ".join(f"that {CLAIM_TOPICS[n]}: **{published['claims'][str(n)]['verdict']}** (claim {n})"
                         for n in numbers if str(n) in published["claims"])
    return (f" Across runs, the claims study ({link}, {published['budget']} budget) tested the seed's answer: "
            f"{verdicts}.")


def conclusions(diag: Diagnosis, splits: dict, cfg, robustness: dict | None = None,
                published: dict | None = None) -> list[tuple]:
    """Answers to the seed's four questions, each resting on a measured figure, then the claims study's verdict
    on the seed's own answer."""
    blocks = [("h2", "Conclusions")]
    held_out = splits.get("test") or splits.get("validation")
    name = "test" if "test" in splits else "validation"
    if held_out is None:
        return [*blocks, ("p", "No held-out split was evaluated, so the questions below cannot be answered.")]
    per_class = held_out["per_class"]
    f1 = {c: v["f1-score"] for c, v in per_class.items()}
    worst, best = min(f1, key=f1.get), max(f1, key=f1.get)
    pair = held_out["confused_pairs"][0] if held_out["confused_pairs"] else None
    blocks += [
        ("p", "**How does the model solve the problem?** "
              f"It classifies {pct(held_out['accuracy'])} of the {held_out['n']:,} {name} images correctly "
              f"(chance: 10%), and the right class is among its top two in {pct(held_out['top2_accuracy'])}. "
              f"Quality differs by class: F1 from {f1[worst]:.3f} ({worst}) to {f1[best]:.3f} ({best})."
              + (f" Its largest confusion is {pair['true']} predicted as {pair['predicted']} ({pair['count']} "
                 "images)." if pair else "") + ensemble_gain(held_out, name, cfg.optim.mutual_weight)
              + across_runs([1], published)),
    ]
    train = splits.get("train")
    gap = (f" On the evaluated splits, train accuracy is {pct(train['accuracy'])} against {pct(held_out['accuracy'])}"
           f" on {name} (a gap of {100 * (train['accuracy'] - held_out['accuracy']):.1f} points)." if train else "")
    large_gap = bool(train) and train["accuracy"] - held_out["accuracy"] > GAP_THRESHOLD
    if large_gap:
        gap += (f" That is above the {100 * GAP_THRESHOLD:.0f}-point threshold: the model has memorised part of the "
                "training images (overfitting in the sense of generalisation), even where the validation loss did "
                "not rise.")
    blocks.append(("p", f"**Is there overfitting, underfitting or another issue?** {diag.sentence}{gap} "
                        f"Calibration: expected calibration error {held_out['ece']:.4f} on {name}."
                        + across_runs([4], published)))
    if diag.verdict == "underfitting" and cfg.optim.schedule == "none":
        advice = (f"The validation loss was still falling ({100 * diag.relative_slope:+.2f}% per epoch at the end), "
                  f"so the cheapest improvement is more epochs or a larger learning rate (this run used "
                  f"{cfg.optim.lr:g} for {diag.epochs} epochs).")
    elif diag.verdict == "underfitting":
        advice = (f"The validation loss was still falling at the end of the {cfg.optim.schedule} schedule "
                  f"({100 * diag.relative_slope:+.2f}% per epoch), so a longer schedule may help; "
                  + ("with a train/held-out gap this large, so may stronger regularisation or augmentation."
                     if large_gap else ""))
    elif diag.verdict == "overfitting":
        advice = (f"The validation loss bottomed out at epoch {diag.best_epoch}, so longer training will not help; "
                  "stronger regularisation (weight decay, dropout, data augmentation) or early stopping will.")
    else:
        advice = ("The validation loss has flattened, so more epochs of this recipe will not help; a different "
                  "recipe (learning-rate schedule, width, regularisation, augmentation) is needed.")
    blocks.append(("p", f"**How can the model be improved?** {advice} Which alternative helps most is not measured "
                        "by this run: train the alternatives and compare them with `cifar-mlp compare`."
                        + across_runs([3, 2], published)))
    se = math.sqrt(held_out["accuracy"] * (1 - held_out["accuracy"]) / held_out["n"])
    text = (f"**How will it generalise to new data?** For new images from the same distribution, expect "
            f"{pct(held_out['accuracy'])} ± {100 * 1.96 * se:.1f} points (95% binomial interval over "
            f"{held_out['n']:,} images)")
    if "validation" in splits and name == "test":
        text += f"; validation accuracy was {pct(splits['validation']['accuracy'])}, consistent with that"
    robust = held_out.get("robustness")
    if robust:
        text += (f". Under simple shifts of the input the accuracy changes: horizontally flipped images "
                 f"{pct(robust['hflip_accuracy'])}, images shifted by {robust['shift_pixels']} pixels "
                 f"{pct(robust['shift_accuracy'])}")
    if robustness and name == "test":
        s = robustness["summary"]
        costliest = sorted(s["strongest"].items(), key=lambda item: item[1])[:3]
        strongest = {r["transform"]: r["strength"] for r in robustness["transforms"]}
        text += (f". Measured by `cifar-mlp robustness` on the test split: over its transforms (rotations, "
                 f"translations, noise, blur, brightness, contrast, JPEG, mirror) the mean accuracy is "
                 f"{pct(s['mean_corrupted'])}, {100 * (s['clean'] - s['mean_corrupted']):.1f} points below the clean "
                 "images; the costliest at their strongest: " + ", ".join(
                     f"{t.replace('_', ' ')} {strongest[t]:g} ({pct(a)})" for t, a in costliest)
                 + ". Other cameras and other datasets were not measured.")
    else:
        text += (". Accuracy on other kinds of change (rotation, other cameras, other datasets) was not measured "
                 "by this run (`cifar-mlp robustness` measures rotations, shifts and corruptions).")
    blocks.append(("p", text + across_runs([5], published)))
    return blocks


def seed_comparison(test: dict) -> list[tuple]:
    recall = [v["recall"] for v in test["per_class"].values()]
    f1 = [v["f1-score"] for v in test["per_class"].values()]
    seed = SEED_FIGURES
    return [
        ("h2", "Comparison with the seed's reported figures"),
        table(["test figure", "Exercise 5 reports", "this run"], [
            ["accuracy", f"about {pct(seed['accuracy'])}", pct(test["accuracy"])],
            ["per-class recall range", f"{pct(seed['recall'][0])} - {pct(seed['recall'][1])}",
             f"{pct(min(recall))} - {pct(max(recall))}"],
            ["per-class F1 range", f"{pct(seed['f1'][0])} - {pct(seed['f1'][1])}",
             f"{pct(min(f1))} - {pct(max(f1))}"],
        ]),
    ]


def to_markdown(blocks: list[tuple]) -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2"):
            out.append(f"{'#' * int(kind[1])} {block[1]}")
        elif kind == "p":
            out.append(block[1])
        elif kind == "code":
            out.append(f"```\n{block[1]}\n```")
        elif kind == "table":
            header, rows = block[1], block[2]
            out.append("\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                                  *("| " + " | ".join(r) + " |" for r in rows)]))
        elif kind == "img":
            out.append(f"![{block[2]}]({block[1]})")
    return "\n\n".join(out) + "\n"


STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
         "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
         "th{background:#eef3f9}img{max-width:100%;display:block;margin:1em 0}pre{background:#f6f6f6;padding:1em}")


def to_html(text: str, folder: Path, title: str) -> str:
    """A markdown document (report.md, a sweep's summary.md) rendered by Python-Markdown, with every image
    embedded as a data URI, so the single file can be mailed."""
    import markdown

    def embed(match: re.Match) -> str:
        data = base64.b64encode((Path(folder) / html.unescape(match.group(1))).read_bytes()).decode()
        return f'src="data:image/png;base64,{data}"'

    body = re.sub(r'src="([^"]+\.png)"', embed, markdown.markdown(text, extensions=["tables", "fenced_code"]))
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")


def write_report(run_dir) -> tuple[Path, Path]:
    run_dir = Path(run_dir)
    blocks = build(run_dir)
    missing = [b[1] for b in blocks if b[0] == "img" and not (run_dir / b[1]).is_file()]
    if missing:
        raise UserError(f"{run_dir} lacks {', '.join(missing)}; rerun cifar-mlp evaluate {run_dir}")
    md, page = run_dir / "report.md", run_dir / "report.html"
    text = to_markdown(blocks)
    rundir.write_text(md, text)
    rundir.write_text(page, to_html(text, run_dir, blocks[0][1]))
    return md, page


def compare(run_dirs: list, out: Path) -> str:
    """A markdown table of the runs' key figures, and their loss curves overlaid in out/compare.png."""
    rows, histories = [], {}
    for d in map(Path, run_dirs):
        if not d.is_dir():
            raise UserError(f"run directory {d} does not exist; give run directories written by cifar-mlp train")
        history = rundir.read_history(d)
        name = d.name if d.name not in histories else str(d)
        histories[name] = history
        metrics = rundir.read_metrics(d)["splits"] if (d / rundir.METRICS).is_file() else {}
        best = min(history, key=lambda r: r["val_loss"])
        test = metrics.get("test", {})
        rows.append([name, len(history), f"{sum(r['epoch_time_s'] for r in history):.0f}", best["epoch"],
                     f"{best['val_loss']:.4f}", pct(max(r["val_acc"] for r in history)),
                     pct(test["accuracy"]) if test else "not evaluated", diagnose(history).verdict])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plots.plot_compare(histories, out / "compare.png")
    header = ["run", "epochs", "train s", "best epoch", "best val loss", "best val acc", "test acc", "diagnosis"]
    return to_markdown([table(header, rows)]) + f"\nloss curves: {out / 'compare.png'}\n"
