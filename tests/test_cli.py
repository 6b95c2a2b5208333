import subprocess
import sys

import pytest

from cifar_mlp import __version__
from cifar_mlp.cli import main


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("data-check", "train", "evaluate", "run", "report", "compare", "predict"):
        assert command in out


def test_version():
    result = subprocess.run([sys.executable, "-m", "cifar_mlp.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"cifar-mlp {__version__}"


def test_run_trains_evaluates_and_reports(synthetic_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    main(["run", "--run-dir", str(run_dir), "--data-dir", str(synthetic_root), "--no-download", "--epochs", "2",
          "--lr", "3e-3", "--batch-size", "64", "--device", "cpu", "--set", "model.widths=[32]",
          "--set", "data.val_per_class=5", "--quiet"])
    out = capsys.readouterr().out
    assert "report:" in out and "validation" in out
    for name in ("history.csv", "metrics.json", "report.md", "report.html", "confusion_matrix_test.png"):
        assert (run_dir / name).is_file(), name
    (run_dir / "report.md").unlink()
    main(["report", str(run_dir)])
    assert (run_dir / "report.md").is_file()
    main(["compare", str(run_dir), "--out", str(tmp_path)])
    assert (tmp_path / "compare.png").is_file()


def test_unknown_preset_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--config", "nope", "--run-dir", str(tmp_path / "r")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("cifar-mlp: error: no preset named 'nope'") and len(err.strip().splitlines()) == 1
