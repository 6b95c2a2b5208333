"""Robustness curves: strength 0 is the evaluation's test accuracy, transforms behave, results repeat, the report
uses them, and bad input gets one-line errors."""


import pytest
import torch
from torch import nn

from cifar_mlp import UserError, rundir
from cifar_mlp.report import write_report
from cifar_mlp.robustness import STRENGTHS, apply, curves, robustness, summarise, translate


@pytest.fixture
def evaluated(evaluated_run):
    return evaluated_run


def test_strength_zero_is_the_test_accuracy_and_the_report_uses_the_curves(evaluated, tmp_path):
    run_dir, root, metrics = evaluated
    rows, summaries = robustness([run_dir], tmp_path / "out", data_dir=root, device="cpu", allow_download=False)
    clean = metrics["splits"]["test"]["accuracy"]
    assert {r["transform"] for r in rows} == set(STRENGTHS)
    assert all(r["accuracy"] == clean for r in rows if r["strength"] == 0)
    assert all(0 <= r["accuracy"] <= 1 and r["n"] == 100 for r in rows)
    assert (tmp_path / "out" / "robustness.png").stat().st_size > 10_000
    assert summaries[str(run_dir)]["clean"] == clean
    assert "costliest" in (tmp_path / "out" / "robustness.md").read_text()
    text = write_report(run_dir)[0].read_text()
    assert "Measured by `cifar-mlp robustness` on the test split" in text and "was not measured" not in text


def test_the_same_command_twice_writes_the_same_file(evaluated, tmp_path):
    run_dir, root, _ = evaluated
    for out in ("a", "b"):
        robustness([run_dir], tmp_path / out, ["translation", "gaussian_noise", "rotation"], data_dir=root,
                   device="cpu", allow_download=False)
    assert (tmp_path / "a" / "robustness.csv").read_bytes() == (tmp_path / "b" / "robustness.csv").read_bytes()


def test_four_quarter_turns_give_back_the_image_and_translation_moves_pixels():
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    turned = images
    for _ in range(4):
        turned = apply("rotation", turned, 90, [0, 0, 0], torch.Generator())[0]
    assert torch.equal(turned, images)
    assert torch.equal(apply("rotation", images, 0, [0, 0, 0], torch.Generator())[0], images)
    shifted = translate(images, 3, [7, 8, 9], torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape and not torch.equal(shifted, images)
    filled = (shifted == torch.tensor([7, 8, 9], dtype=torch.uint8).view(1, 3, 1, 1)).all(1)
    assert (filled.sum((1, 2)) >= 2 * 32).all()  # a shift of 3 pixels uncovers at least two full rows or columns


class MeanColour(nn.Module):
    """Predicts from the mean colour of the central disc, which a rotation about the centre maps onto itself."""

    def __init__(self):
        super().__init__()
        i, j = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
        self.register_buffer("disc", (((i - 15.5) ** 2 + (j - 15.5) ** 2) <= 12 ** 2).float())
        self.register_buffer("prototypes", torch.eye(3).repeat(4, 1)[:10] * 2)

    def forward(self, x):
        colour = (x * self.disc).sum((2, 3)) / self.disc.sum()
        return -torch.cdist(colour, self.prototypes)


def test_a_model_that_reads_the_mean_colour_has_a_flat_rotation_curve():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (300,), generator=generator)
    images = torch.randint(40, 90, (300, 3, 32, 32), generator=generator, dtype=torch.int64)
    images[torch.arange(300), labels] += 120  # each class has its colour
    rows = curves(MeanColour(), [0.4, 0.4, 0.4], [0.25, 0.25, 0.25], images.to(torch.uint8), labels.numpy(),
                  ["rotation", "mirror"])
    accuracies = [r["accuracy"] for r in rows]
    assert accuracies[0] > 0.9 and max(accuracies) - min(accuracies) == 0


def test_one_line_errors(evaluated, trained_run, tmp_path):
    run_dir, root, _ = evaluated
    for args, message in (([tmp_path / "nothing"], "has no metrics.json"), ([trained_run[0]], "has no metrics.json")):
        with pytest.raises(UserError, match=message) as info:
            robustness(args, tmp_path / "out", data_dir=root, device="cpu", allow_download=False)
        assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="unknown transform 'swirl'; choose from rotation"):
        robustness([run_dir], tmp_path / "out", ["swirl"], data_dir=root, device="cpu", allow_download=False)
    (run_dir / rundir.ROBUSTNESS).write_text("{")
    with pytest.raises(UserError, match="robustness.json is damaged"):
        write_report(run_dir)
    (run_dir / rundir.ROBUSTNESS).unlink()


def test_brightness_and_contrast_follow_cifar_10_c():
    image = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    image[0, 0], image[0, 1], image[0, 2, :16] = 200, 100, 50  # value (the max channel) 200/255
    brighter = apply("brightness", image, 0.1, [0, 0, 0], torch.Generator())[0].float()
    factor = (200 / 255 + 0.1) / (200 / 255)
    assert torch.allclose(brighter, (image.float() * factor).round(), atol=1)
    flat = apply("contrast", image, 0.5, [0, 0, 0], torch.Generator())[0].float()
    mean = image.float().mean((2, 3), keepdim=True)
    assert torch.allclose(flat, ((image.float() - mean) * 0.5 + mean).round(), atol=1)


def test_the_summary_weights_families_equally_and_names_the_costliest_at_its_strongest():
    rows = [{"transform": "jpeg", "strength": s, "accuracy": a, "n": 10} for s, a in ((0, 0.9), (20, 0.8), (60, 0.2))]
    rows += [{"transform": "mirror", "strength": s, "accuracy": a, "n": 10} for s, a in ((0, 0.9), (1, 0.6))]
    summary = summarise(rows)
    assert summary["clean"] == 0.9 and summary["mean_corrupted"] == pytest.approx((0.5 + 0.6) / 2)
    assert (summary["worst"], summary["worst_strength"], summary["worst_accuracy"]) == ("jpeg", 60, 0.2)
