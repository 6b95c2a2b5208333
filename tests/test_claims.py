"""cifar-mlp claims: both budgets end to end on synthetic data (their specs, shortened), the report's numbers
against the studies' trials.csv, a rerun that trains nothing, the specs of both budgets, and bad input."""

import csv
import json
import re
from pathlib import Path

import pytest
from conftest import write_synthetic_cifar

from cifar_mlp import UserError, claims, robustness, sweep, verdicts
from cifar_mlp.config import ModelConfig
from cifar_mlp.model import MLP, parameter_count

SEED_TEXT = Path(__file__).resolve().parents[1].parent / "shared" / "seed" / "000_1c7336e1488b635a.txt"
SYNTHETIC = ('"data.val_per_class" = 5\n"train.device" = "cpu"\n"train.batch_size" = 64\n"optim.warmup_epochs" = 0.0\n'
             '"data.clean_epochs" = 0\n')


def shortened_specs(budget: str, folder: Path) -> Path:
    """A budget's specs for a 300-image dataset: 3 epochs (90 for the long run at lr 1e-6, so that it passes 80),
    1 warm-up epoch, no clean tail unless a point sets one, batches of 64, 5 validation images per class, depths 1,
    3 and 8 only, and 2 seeds where the full budget has 3 (the same code paths, a third fewer runs)."""
    folder.mkdir()
    for path in (claims.SPECS / budget).glob("*.toml"):
        text = re.sub(r'"train.epochs" = \d+', '"train.epochs" = 3', path.read_text())
        text = re.sub(r'"train.batch_size" = \d+', '"train.batch_size" = 64', text)
        text = re.sub(r'"optim.warmup_epochs" = [\d.]+', '"optim.warmup_epochs" = 1.0', text)
        text = text.replace("seeds = [0, 1, 2]", "seeds = [0, 1]")
        text = re.sub(r'\[points\.[a-z-]+-d[2456]\]\n(?:"[^\n]*\n)*\n?', "", text)
        text = text.replace('"optim.lr" = 1e-6\n"train.epochs" = 3', '"optim.lr" = 1e-6\n"train.epochs" = 90')
        if "[fixed]\n" in text:
            text = text.replace("[fixed]\n", "[fixed]\n" + SYNTHETIC)
            if '"train.epochs"' not in text.split("[fixed]")[1].split("[points")[0]:
                text = text.replace("[fixed]\n", '[fixed]\n"train.epochs" = 3\n')
        else:
            text = text.replace("\n[points.", f'\n[fixed]\n{SYNTHETIC}"train.epochs" = 3\n\n[points.', 1)
        (folder / path.name).write_text(text)
    return folder


def table_rows(markdown: str, title: str) -> list[list[str]]:
    block = markdown.split(f"**{title}**", 1)[1].split("\n\n", 2)[1]
    return [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines()[2:]]


def trials(study_dir: Path) -> dict[str, dict]:
    with (study_dir / "trials.csv").open() as f:
        return {Path(r["run_dir"]).name: r for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def small_budget(tmp_path_factory):
    base = tmp_path_factory.mktemp("claims")
    root = write_synthetic_cifar(base / "cifar")
    specs = shortened_specs("small", base / "specs")
    path, found = claims.claims(base / "study", "small", data_dir=root, device="cpu", allow_download=False,
                                quiet=True, specs_dir=specs)
    return base, root, specs, path, found


def test_the_small_budget_runs_every_study_and_reports_a_verdict_per_claim(small_budget):
    base, _, _, path, found = small_budget
    text = path.read_text()
    assert [f.number for f in found] == [1, 2, 3, 4, 5, 6]
    lines = re.findall(r"^Verdict: (.+)$", text, flags=re.M)
    assert lines == [f.verdict for f in found]
    assert set(lines) <= {verdicts.SUPPORTED, verdicts.REFUTED, verdicts.PARTLY, verdicts.UNTESTABLE}
    assert verdicts.UNTESTABLE not in lines  # every study of the budget ran
    for quotes in verdicts.QUOTES.values():
        for quote in quotes:
            assert f'> "{quote}"' in text
    published = json.loads((base / "study" / "verdicts.json").read_text())
    assert published["budget"] == "small"
    assert {n: c["verdict"] for n, c in published["claims"].items()} == {str(f.number): f.verdict for f in found}
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (base / "study" / image).is_file()
    page = (base / "study" / "claims.html").read_text()
    assert 'src="data:image/png;base64,' in page and not re.search(r'src="(?!data:)', page)
    assert "Machines: " in text and "cifar-mlp claims --study-dir" in text


def test_the_reports_numbers_are_those_of_the_studies_trials_csv(small_budget):
    base, *_, path, _ = small_budget
    text = path.read_text()
    presets = {**trials(base / "study" / "presets"), **trials(base / "study" / "presets-long")}
    rows = table_rows(text, "Test accuracy and training time")
    assert len(rows) == 5
    for name, seeds, acc, seconds, _ in rows:
        trial = presets[f"{name}-s0"]
        assert seeds == "1" and acc == f"{100 * float(trial['test_acc']):.1f}"
        assert seconds == f"{float(trial['train_seconds']):.0f}"
    ablation = trials(base / "study" / "ablation")
    for point, *_, acc, _ in table_rows(text, "From the seed's recipe towards best's, one change at a time (3 epochs "
                                              "each)"):
        assert acc == f"{100 * float(ablation[f'{point}-s0']['test_acc']):.1f}"
    depth = trials(base / "study" / "depth")
    for variant, *cells in table_rows(text, "Test accuracy % by number of hidden layers"):
        for layers, cell in zip((1, 3, 8), cells, strict=True):
            run = depth.get(f"{variant}-d{layers}-s0")
            assert cell == (f"{100 * float(run['test_acc']):.1f}" if run else "")


def test_a_rerun_trains_nothing_and_writes_the_same_verdicts(small_budget):
    base, root, specs, path, found = small_budget
    checkpoints = {p: p.stat().st_mtime_ns for p in (base / "study").rglob("last.pt")}
    assert len(checkpoints) == 2 + 3 + 5 + 14 + 7
    _, again = claims.claims(base / "study", "small", data_dir=root, device="cpu", allow_download=False, quiet=True,
                             specs_dir=specs, out=base / "published")
    assert {p: p.stat().st_mtime_ns for p in (base / "study").rglob("last.pt")} == checkpoints
    assert [f.verdict for f in again] == [f.verdict for f in found]
    assert (base / "published" / "claims.md").is_file() and (base / "published" / "depth.png").is_file()


def test_the_full_budget_runs_end_to_end_on_every_study_and_transform(tmp_path):
    """Its code paths the small budget does not take: several seeds of the cheap presets, the CNN without augmentation,
    the depth study and the ablation over seeds, every robustness family."""
    root = write_synthetic_cifar(tmp_path / "cifar")
    path, found = claims.claims(tmp_path / "study", "full", data_dir=root, device="cpu", allow_download=False,
                                quiet=True, specs_dir=shortened_specs("full", tmp_path / "specs"))
    text = path.read_text()
    assert [f.number for f in found] == [1, 2, 3, 4, 5, 6]
    assert verdicts.UNTESTABLE not in [f.verdict for f in found]
    assert "**full budget**" in text
    assert [row[:2] for row in table_rows(text, "Test accuracy and training time")] == [
        ["seed", "2"], ["fast", "2"], ["best-noaug", "1"], ["best", "1"], ["cnn", "1"], ["cnn-noaug", "1"]]
    header = text.split("**Test accuracy % by number of hidden layers**", 1)[1].split("\n\n", 2)[1].splitlines()[0]
    assert header.split("|")[2:-1] == [" 1 ", " 3 ", " 8 "]
    for study in ("depth", "ablation"):
        seeds = {}
        for row in trials(tmp_path / "study" / study).values():
            seeds.setdefault(row["point"], set()).add(row["seed"])
        assert seeds and all(s == {"0", "1"} for s in seeds.values()), study
    families = text.split("**Share of clean test accuracy kept (%)", 1)[1].split("\n\n", 2)[1].splitlines()[0]
    assert all(name in families for name in robustness.STRENGTHS)


def test_the_quotes_are_the_seeds_words():
    if not SEED_TEXT.is_file():
        pytest.skip(f"the seed document is not at {SEED_TEXT}")
    seed = " ".join(SEED_TEXT.read_text().split())
    for quotes in verdicts.QUOTES.values():
        for quote in quotes:
            assert quote in seed


@pytest.mark.parametrize("budget", claims.BUDGETS)
def test_both_budgets_specs_are_valid_studies_with_the_points_the_verdicts_read(budget):
    specs = {name: sweep.load_spec(path) for name, path in claims.spec_paths(budget).items()}
    assert len({s.name for s in specs.values()}) == len(specs)
    assert {"seed", "fast"} <= set(specs["presets"].points)
    costly = {"best-noaug", "best", "cnn"} | ({"cnn-noaug"} if budget == "full" else set())
    assert costly == set(specs["presets-long"].points)
    assert "lr-1e-6" in specs["learning-rate"].points
    assert set(verdicts.ABLATION_PARENT) | {"seed"} == set(specs["ablation"].points)
    depth = specs["depth"].points
    assert all(verdicts.parse_depth_point(p) for p in depth) and {"blocks-d3", "blocks-d8"} <= set(depth)
    seed_params = parameter_count(MLP(ModelConfig()))
    for name, point in depth.items():
        if name.startswith("equal-params"):
            params = parameter_count(MLP(ModelConfig(widths=point["model.widths"])))
            assert abs(params / seed_params - 1) < 0.005


@pytest.mark.parametrize("budget", claims.BUDGETS)
def test_the_ablation_ends_at_best_in_every_setting_it_changes(budget):
    spec = sweep.load_spec(claims.spec_paths(budget)["ablation"])
    last = spec.points["augmentation"]
    # best's clean tail (10 epochs) is longer than the ablation's runs, and no ablation step sets it
    best = sweep.point_config(spec, {"preset": "best", "data.clean_epochs": 0}, seed=0).to_dict()
    ended = sweep.point_config(spec, last, seed=0).to_dict()
    for key in last:
        section, name = key.split(".")
        if key != "optim.warmup_epochs":
            assert ended[section][name] == best[section][name], key


def test_bad_budget_and_missing_specs_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="--budget must be one of small, full"):
        claims.spec_paths("huge")
    with pytest.raises(UserError, match=r"missing from .*nowhere \(presets, presets-long"):
        claims.claims(tmp_path / "study", specs_dir=tmp_path / "nowhere")


def test_the_command_reports_a_missing_dataset_in_one_line(tmp_path, capsys):
    from cifar_mlp.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["claims", "--study-dir", str(tmp_path / "study"), "--data-dir", str(tmp_path / "none"), "--no-download"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "\n" not in err and "CIFAR-10 not found" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["claims", "--study-dir", str(tmp_path / "study"), "--budget", "huge"])
    assert exit_info.value.code == 2
