"""The seed's claims against the studies' numbers: each claim's parts, each part's verdict from a stated rule.

Every comparison is of two groups of runs (one figure per run, over seeds): the difference of their means is a
difference only when it exceeds two standard errors. A group of one run has no spread of its own, so it is given
FALLBACK_STD, a little above the largest seed-to-seed standard deviation measured for any preset (0.4 points,
README). A claim's verdict combines its parts' verdicts: all supported is supported, all refuted is refuted, a
mix is partly supported; parts that cannot be tested (a study missing from the budget) are left out.

Nothing here reads files or draws: claims.py gathers the runs, calls these functions, renders what they return.
"""

import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

SUPPORTED, REFUTED, PARTLY, UNTESTABLE = "supported", "refuted", "partly supported", "not testable"
FALLBACK_STD = 0.005  # the standard deviation given to a single run's figure (accuracies are fractions)
SIGNIFICANCE = 2.0  # standard errors
OVERFIT_TOLERANCE = 1.01  # a final validation loss more than 1% above its minimum is notable overfitting
VANISHING = 0.1  # an early layer's gradient norm under a tenth of the last hidden layer's is a vanishing gradient
ABOUT = 0.025  # "about 50%": within half of the 5-point rounding such a figure implies
RANGE_ENDS = 0.05  # "between 32% and 65%": each end within 5 points
SEED_LR = 1e-6
SEED_DEPTH = 3

QUOTES = {
    1: ["the obtained results are satisfactory, but worse than the convolutional models"],
    2: ["More layers don't improve the model because when there are too many layers the model doesn't upgrade "
        "properly the weights", "a poor propagation of the gradient"],
    3: ["The only reasonable way to improve the model is to add more epochs to the train process due to unseen "
        "validation grow."],
    4: ["For 80 epochs there is no notable overfitting as validation loss continues to decrease for every epoch. "
        "While train loss still decreases and validation loss doesn't reach a global minimun the model can be "
        "trained for more epochs without suffering from overfitting."],
    5: ["This model will generalize bad to new data.", "However, in the CNN models the feature extraction survives "
        "this kind of transformations."],
    6: ["The model has an accurary around 50% for the test set, a precision between less than %63 for the better "
        "fitted class, a recall between 32%-65% and a F1-Score around 36%-63%."],
}
TITLES = {1: "MLPs against the CNN comparator", 2: "Depth and the gradient", 3: "Epochs, learning rate and the recipe",
          4: "Overfitting with more epochs", 5: "Robustness to transformations", 6: "The seed's reported figures"}
RULES = [
    f"Two groups of runs differ when the difference of their means exceeds {SIGNIFICANCE:g} standard errors "
    f"(the standard error from each group's standard deviation over seeds; a single run is given "
    f"{100 * FALLBACK_STD:g} points); otherwise they show no difference.",
    f"Notable overfitting: the validation loss at the last epoch is more than {100 * (OVERFIT_TOLERANCE - 1):g}% "
    "above its minimum; the onset is the epoch of that minimum.",
    f"A vanishing gradient: the second hidden layer's weight-gradient norm (mean over the epochs' steps) is under "
    f"{VANISHING:g} times the last hidden layer's, at the deepest point. (The second, not the first: at a fixed "
    "width every hidden layer but the first has the same shape, so their norms compare; the first reads 3,072 "
    "inputs.)",
    f"\"Around X%\": within {100 * ABOUT:g} points; a range \"A%-B%\": each end within {100 * RANGE_ENDS:g} points.",
    "A claim is supported when all its testable parts are, refuted when all are refuted, partly supported "
    "otherwise.",
]


@dataclass
class Run:
    """One finished run of a study: the figures of its trials.csv row, and its run directory's files."""
    point: str
    seed: int
    val_acc: float
    test_acc: float
    train_seconds: float
    history: list[dict]
    metrics: dict
    robustness: dict | None = None
    run_dir: Path | None = None


@dataclass
class Part:
    text: str
    verdict: str


@dataclass
class Finding:
    """A claim's verdict with what it rests on: tables (header, rows) and figures (file, kind, data, alt text)."""
    number: int
    parts: list[Part]
    tables: list[tuple[str, list, list]] = field(default_factory=list)
    figures: list[tuple[str, str, object, str]] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return combine([p.verdict for p in self.parts])


def combine(verdicts: list[str]) -> str:
    tested = [v for v in verdicts if v != UNTESTABLE]
    if not tested:
        return UNTESTABLE
    if all(v == SUPPORTED for v in tested):
        return SUPPORTED
    return REFUTED if all(v == REFUTED for v in tested) else PARTLY


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


@dataclass
class Comparison:
    diff: float  # mean(a) - mean(b)
    se: float

    @property
    def outcome(self) -> str:
        if abs(self.diff) <= SIGNIFICANCE * self.se:
            return "no difference"
        return "higher" if self.diff > 0 else "lower"

    def text(self, scale: float = 100, unit: str = " points") -> str:
        diff = round(scale * self.diff, 1) + 0.0  # adding 0.0 turns a rounded -0.0 into 0.0
        return f"{diff:+.1f} ± {scale * self.se:.1f}{unit} ({self.outcome})"


def compare(a: list[float], b: list[float]) -> Comparison:
    """Group a against group b: the difference of the means and its standard error."""
    def variance_of_mean(values):
        std = statistics.stdev(values) if len(values) > 1 else FALLBACK_STD
        return std ** 2 / len(values)

    return Comparison(statistics.fmean(a) - statistics.fmean(b), math.sqrt(variance_of_mean(a) + variance_of_mean(b)))


def when(outcome: str, supported_if: str) -> str:
    return SUPPORTED if outcome == supported_if else REFUTED


def pm(values: list[float], scale: float = 100, digits: int = 1) -> str:
    m, s = mean_std(values)
    return f"{scale * m:.{digits}f}" + ("" if math.isnan(s) else f" ± {scale * s:.{digits}f}")


def untestable(number: int, what: str) -> Finding:
    return Finding(number, [Part(f"Not measured in this budget: {what}.", UNTESTABLE)])


# Claim 1: the MLP presets against the CNN

MLP_PRESETS = ("seed", "fast", "best-noaug", "best")


def claim_mlp_vs_cnn(presets: dict[str, list[Run]]) -> Finding:
    if "cnn" not in presets or not any(p in presets for p in MLP_PRESETS):
        return untestable(1, "the CNN comparator and the MLP presets")
    cnn = [r.test_acc for r in presets["cnn"]]
    parts, rows = [], []
    for name in (*MLP_PRESETS, "cnn", "cnn-noaug"):
        if name not in presets:
            continue
        runs = presets[name]
        acc = [r.test_acc for r in runs]
        row = [name, len(runs), pm(acc), pm([r.train_seconds for r in runs], 1, 0)]
        if name in MLP_PRESETS:
            c = compare(cnn, acc)
            parts.append(Part(f"The CNN against `{name}`: {c.text()} in test accuracy.", when(c.outcome, "higher")))
            row.append(c.text())
        else:
            row.append("")
        rows.append(row)
    parts.append(Part("\"Satisfactory\" names no threshold to test against; the table gives the figures.", UNTESTABLE))
    points = {name: [(r.train_seconds, r.test_acc) for r in runs] for name, runs in presets.items()}
    return Finding(1, parts,
                   [("Test accuracy and training time", ["preset", "seeds", "test acc %", "training s",
                                                         "CNN minus this preset"], rows)],
                   [("accuracy_time.png", "accuracy_time", points, "test accuracy against training time, every run")])


# Claim 2: depth

def parse_depth_point(name: str) -> tuple[str, int] | None:
    match = re.fullmatch(r"(.+)-d(\d+)", name)
    return (match[1], int(match[2])) if match else None


def layer_norms(runs: list[Run], depth: int) -> list[float]:
    """Each weight layer's gradient norm, mean over epochs and seeds: the hidden layers, then the head."""
    columns = [f"grad_norm_{i}" for i in range(1, depth + 2)]
    return [statistics.fmean(row[c] for r in runs for row in r.history) for c in columns]


def claim_depth(depth: dict[str, list[Run]]) -> Finding:
    grid: dict[str, dict[int, list[Run]]] = {}
    for point, runs in depth.items():
        parsed = parse_depth_point(point)
        if parsed:
            grid.setdefault(parsed[0], {})[parsed[1]] = runs
    if not grid:
        return untestable(2, "the depth study")
    parts, rows, norms, ratios = [], [], {}, []
    depths = sorted({d for by_depth in grid.values() for d in by_depth})
    for variant, by_depth in grid.items():
        rows.append([variant, *(pm([r.test_acc for r in by_depth[d]]) if d in by_depth else "" for d in depths)])
        deeper = [d for d in by_depth if d > SEED_DEPTH]
        if SEED_DEPTH in by_depth and deeper:
            chosen = max(deeper, key=lambda d: statistics.fmean(r.val_acc for r in by_depth[d]))
            c = compare([r.test_acc for r in by_depth[chosen]], [r.test_acc for r in by_depth[SEED_DEPTH]])
            parts.append(Part(f"`{variant}`: {chosen} hidden layers (the deeper depth with the best validation "
                              f"accuracy) against {SEED_DEPTH}: {c.text()} in test accuracy.",
                              REFUTED if c.outcome == "higher" else SUPPORTED))
        deepest = max(by_depth)
        if deepest > SEED_DEPTH - 1 and all("grad_norm_1" in r.history[0] for r in by_depth[deepest]):
            label = f"{variant}, {deepest} layers"
            norms[label] = layer_norms(by_depth[deepest], deepest)
            ratio = norms[label][1] / norms[label][deepest - 1]
            ratios.append([variant, deepest, f"{norms[label][1]:.3g}", f"{norms[label][deepest - 1]:.3g}",
                           f"{ratio:.3g}"])
            if variant in ("blocks", "seed-lr"):
                parts.append(Part(f"The explanation, in `{variant}` at {deepest} layers: the second hidden layer's "
                                  f"gradient norm is {ratio:.3g} times the last hidden layer's.",
                                  SUPPORTED if ratio < VANISHING else REFUTED))
    tables = [("Test accuracy % by number of hidden layers", ["variant", *map(str, depths)], rows)]
    if ratios:
        tables.append(("Gradient norms at the deepest point (mean over epochs and seeds)",
                       ["variant", "hidden layers", "second hidden layer", "last hidden layer", "ratio"], ratios))
    curves = {variant: {d: [r.test_acc for r in runs] for d, runs in sorted(by_depth.items())}
              for variant, by_depth in grid.items()}
    figures = [("depth.png", "depth", curves, "test accuracy against the number of hidden layers, each variant")]
    if norms:
        figures.append(("gradient_norms.png", "gradient_norms", norms,
                        "each layer's gradient norm at the deepest point"))
    return Finding(2, parts, tables, figures)


# Claim 3: epochs, the learning rate, and the recipe's other changes

def lr_of(point: str) -> float | None:
    match = re.fullmatch(r"lr-(.+)", point)
    return float(match[1]) if match else None


def val_acc_at(runs: list[Run], epoch: int) -> list[float]:
    return [r.history[epoch - 1]["val_acc"] for r in runs if len(r.history) >= epoch]


EPOCH_MARKS = (10, 20, 40, 80, 160, 320, 640, 1280)
ABLATION_PARENT = {"optimiser": "seed", "width": "optimiser", "projection": "width", "augmentation": "projection",
                   "dropout": "projection", "ensemble": "dropout"}
ABLATION_CHANGE = {"optimiser": ("AdamW at peak lr 1e-2, one-cycle, batch 1024, label smoothing 0.25, "
                                 "weight decay 0.07"),
                   "width": "widths 1024-512-256", "projection": "the fixed projection onto 512 components",
                   "augmentation": "flips, translations and colour jitter", "dropout": "dropout 0.5, 0.2 on the inputs",
                   "ensemble": "an ensemble of 3"}


def claim_epochs(learning_rate: dict[str, list[Run]], ablation: dict[str, list[Run]]) -> Finding:
    rates = {lr_of(p): runs for p, runs in learning_rate.items() if lr_of(p) is not None}
    parts, tables, figures = [], [], []
    if SEED_LR in rates:
        longest = min(len(r.history) for r in rates[SEED_LR])
        lengths = {len(r.history) for runs in rates.values() for r in runs}
        marks = sorted({e for e in EPOCH_MARKS if e <= max(lengths)} | lengths)
        tables.append(("Validation accuracy % at each number of epochs (constant learning rate)",
                       ["learning rate", *map(str, marks)],
                       [[f"{lr:g}", *(pm(val_acc_at(runs, e)) if val_acc_at(runs, e) else "" for e in marks)]
                        for lr, runs in sorted(rates.items())]))
        at_80, at_end = val_acc_at(rates[SEED_LR], min(80, longest)), val_acc_at(rates[SEED_LR], longest)
        if longest > 80:
            c = compare(at_end, at_80)
            parts.append(Part(f"More epochs at the seed's learning rate: {longest} epochs against 80, {c.text()} in "
                              "validation accuracy.", when(c.outcome, "higher")))
        others = [(lr, e) for lr in rates if lr != SEED_LR for e in range(1, 81) if val_acc_at(rates[lr], e)]
        if others:
            lr, epoch = max(others, key=lambda le: statistics.fmean(val_acc_at(rates[le[0]], le[1])))
            c = compare(val_acc_at(rates[lr], epoch), at_end)
            parts.append(Part(f"Another learning rate instead of more epochs: lr {lr:g} after {epoch} epochs (the best "
                              f"cell within 80 epochs) against lr 1e-6 after {longest}: {c.text()} in validation "
                              "accuracy.", REFUTED if c.outcome == "higher" else SUPPORTED))
        figures.append(("learning_rate.png", "learning_rate",
                        {f"lr {lr:g}": [[row["val_acc"] for row in r.history] for r in runs]
                         for lr, runs in sorted(rates.items())}, "validation accuracy per epoch at each learning rate"))
    steps = [s for s in ABLATION_PARENT if s in ablation and ABLATION_PARENT[s] in ablation]
    if steps:
        rows = [["seed", "the seed's recipe", "", pm([r.test_acc for r in ablation["seed"]]) if "seed" in ablation
                 else "", ""]]
        gains = []
        for step in steps:
            c = compare([r.test_acc for r in ablation[step]], [r.test_acc for r in ablation[ABLATION_PARENT[step]]])
            rows.append([step, ABLATION_CHANGE[step], ABLATION_PARENT[step], pm([r.test_acc for r in ablation[step]]),
                         c.text()])
            gains.append((step, c))
        epochs = len(next(iter(ablation.values()))[0].history)
        helped = [s for s, c in gains if c.outcome == "higher"]
        parts.append(Part(f"Changes other than epochs, at a fixed {epochs} epochs: "
                          + (f"{', '.join(helped)} add{'s' if len(helped) == 1 else ''} test accuracy." if helped
                             else "none adds test accuracy."),
                          REFUTED if helped else SUPPORTED))
        tables.append((f"From the seed's recipe towards best's, one change at a time ({epochs} epochs each)",
                       ["point", "change", "added to", "test acc %", "gain over its parent"], rows))
        figures.append(("ablation.png", "ablation", {s: [r.test_acc for r in ablation[s]] for s in
                                                     ["seed", *steps] if s in ablation},
                        "test accuracy of each point of the ablation"))
    if not parts:
        return untestable(3, "the learning-rate and ablation studies")
    return Finding(3, parts, tables, figures)


# Claim 4: overfitting

def overfitting(history: list[dict]) -> tuple[int, bool]:
    """(the epoch of the lowest validation loss, whether the last epoch's is notably above it)."""
    best = min(history, key=lambda r: r["val_loss"])
    return best["epoch"], history[-1]["val_loss"] > OVERFIT_TOLERANCE * best["val_loss"]


def claim_overfitting(seed_runs: list[Run], long_runs: list[Run]) -> Finding:
    parts, rows = [], []
    for label, runs in (("the seed preset", seed_runs), ("lr 1e-6, trained longer", long_runs)):
        for r in runs:
            onset, notable = overfitting(r.history)
            last = r.history[-1]
            rows.append([label, r.seed, len(r.history), onset, f"{last['val_loss']:.4f}",
                         f"{min(h['val_loss'] for h in r.history):.4f}", "yes" if notable else "no",
                         f"{100 * last['train_acc']:.1f}", f"{100 * last['val_acc']:.1f}", f"{100 * r.test_acc:.1f}"])
    if seed_runs:
        notable = [overfitting(r.history)[1] for r in seed_runs]
        parts.append(Part(f"No notable overfitting at {len(seed_runs[0].history)} epochs: in "
                          f"{notable.count(False)} of {len(notable)} seeds.",
                          SUPPORTED if not any(notable) else REFUTED if all(notable) else PARTLY))
    if long_runs:
        epochs = min(len(r.history) for r in long_runs)
        onsets = [overfitting(r.history)[0] for r in long_runs]
        notable = [overfitting(r.history)[1] for r in long_runs]
        if not any(notable):
            verdict, text = SUPPORTED, f"no notable overfitting through {epochs} epochs"
        elif min(onsets) > 80:
            verdict, text = PARTLY, (f"it can be trained past 80 epochs, but overfits from epoch "
                                     f"{round(statistics.fmean(onsets))} on (mean over seeds)")
        else:
            verdict, text = REFUTED, f"it overfits from epoch {round(statistics.fmean(onsets))} on"
        parts.append(Part(f"Trained for more epochs (the seed's recipe, {epochs} epochs): {text}.", verdict))
    if not parts:
        return untestable(4, "the seed preset and the long run")
    figures = [("long_run.png", "long_run", long_runs[0].history, "training and validation loss of the long run")] if (
        long_runs) else []
    return Finding(4, parts, [("Where the validation loss bottoms out", [
        "run", "seed", "epochs", "lowest val loss at epoch", "last val loss", "lowest", "notable overfitting",
        "train acc % (train mode)", "val acc %", "test acc %"], rows)], figures)


# Claim 5: robustness

def retained(run: Run, families: list[str] | None = None) -> float:
    """The mean over transform families (each over its strengths above 0) of accuracy / clean accuracy."""
    rows = run.robustness["transforms"]
    clean = next(r["accuracy"] for r in rows if r["strength"] == 0)
    by_family = {}
    for r in rows:
        if r["strength"] and (families is None or r["transform"] in families):
            by_family.setdefault(r["transform"], []).append(r["accuracy"] / clean)
    return statistics.fmean(statistics.fmean(v) for v in by_family.values())


def strongest(run: Run, family: str) -> float:
    return [r for r in run.robustness["transforms"] if r["transform"] == family][-1]["accuracy"]


def claim_robustness(presets: dict[str, list[Run]]) -> Finding:
    measured = {name: runs for name, runs in presets.items() if runs and all(r.robustness for r in runs)}
    families = sorted({r["transform"] for runs in measured.values() for run in runs
                       for r in run.robustness["transforms"]})
    if "seed" not in measured or "rotation" not in families:
        return untestable(5, "robustness curves of the seed preset under rotation")
    parts = []
    seed = measured["seed"]
    c = compare([strongest(r, "rotation") for r in seed], [r.test_acc for r in seed])
    parts.append(Part(f"`seed` under rotation: at 30 degrees against clean, {c.text()} in test accuracy.",
                      when(c.outcome, "lower")))
    for cnn, mlp, why in (("cnn-noaug", "seed", "both trained without augmentation"),
                          ("cnn", "best", "both trained with flips and translations, `best` also with colour jitter")):
        if cnn in measured and mlp in measured:
            for fams, label in ((["rotation"], "rotation"), (None, "all transforms"))[:1 + (len(families) > 1)]:
                c = compare([retained(r, fams) for r in measured[cnn]], [retained(r, fams) for r in measured[mlp]])
                parts.append(Part(f"`{cnn}` against `{mlp}` ({why}), share of clean accuracy kept under {label}: "
                                  f"{c.text()}.", when(c.outcome, "higher")))
    rows = [[name, len(runs), pm([r.test_acc for r in runs]),
             *(pm([retained(r, [f]) for r in runs]) for f in families), pm([retained(r) for r in runs])]
            for name, runs in measured.items()]
    curves = [{"run": name, "transform": t, "strength": s,
               "accuracy": statistics.fmean(next(x["accuracy"] for x in r.robustness["transforms"]
                                                 if x["transform"] == t and x["strength"] == s) for r in runs)}
              for name, runs in measured.items() for t in families
              for s in sorted({x["strength"] for x in runs[0].robustness["transforms"] if x["transform"] == t})]
    return Finding(5, parts, [("Share of clean test accuracy kept (%), mean over each family's strengths",
                               ["preset", "seeds", "clean test acc %", *families, "mean"], rows)],
                   [("robustness.png", "robustness", curves, "test accuracy against strength, each preset")])


# Claim 6: the seed's figures

def claim_figures(seed_runs: list[Run]) -> Finding:
    if not seed_runs:
        return untestable(6, "the seed preset")
    tests = [r.metrics["splits"]["test"] for r in seed_runs]

    def per_class(figure, pick):
        return [pick(c[figure] for c in t["per_class"].values()) for t in tests]

    acc = [t["accuracy"] for t in tests]
    precision = per_class("precision", max)
    recall_low, recall_high = per_class("recall", min), per_class("recall", max)
    f1_low, f1_high = per_class("f1-score", min), per_class("f1-score", max)

    def near(values, target, tolerance) -> bool:
        return abs(statistics.fmean(values) - target) <= tolerance

    def verdict(holds: bool) -> str:
        return SUPPORTED if holds else REFUTED

    parts = [Part(f"Test accuracy around 50%: {pm(acc)}%.", verdict(near(acc, 0.50, ABOUT))),
             Part(f"Precision of the best class under 63%: {pm(precision)}%.",
                  verdict(statistics.fmean(precision) < 0.63)),
             Part(f"Recall between 32% and 65%: {pm(recall_low)}% to {pm(recall_high)}%.",
                  verdict(near(recall_low, 0.32, RANGE_ENDS) and near(recall_high, 0.65, RANGE_ENDS))),
             Part(f"F1 between 36% and 63%: {pm(f1_low)}% to {pm(f1_high)}%.",
                  verdict(near(f1_low, 0.36, RANGE_ENDS) and near(f1_high, 0.63, RANGE_ENDS)))]
    rows = [["test accuracy", "around 50%", pm(acc)], ["precision, best class", "under 63%", pm(precision)],
            ["recall, lowest to highest class", "32%-65%", f"{pm(recall_low)} to {pm(recall_high)}"],
            ["F1, lowest to highest class", "36%-63%", f"{pm(f1_low)} to {pm(f1_high)}"]]
    seeds = f"{len(seed_runs)} seed" + "s" * (len(seed_runs) > 1)
    return Finding(6, parts, [(f"The seed's recipe reproduced ({seeds}, test split)",
                               ["figure", "the seed reports", "measured %"], rows)])
