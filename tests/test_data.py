import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import write_batch

from cifar_mlp import UserError
from cifar_mlp.data import (
    CLASSES,
    augment,
    batch_indices,
    channel_stats,
    class_counts,
    load_cifar10,
    make_splits,
    mix,
    normalise,
    resolve_data_dir,
    rotate_and_zoom,
    split_indices,
)


def test_loads_synthetic_batches(synthetic_root):
    data = load_cifar10(synthetic_root, allow_download=False)
    assert data.train_images.shape == (300, 3, 32, 32) and data.train_images.dtype == np.uint8
    assert data.test_images.shape == (100, 3, 32, 32)
    assert class_counts(data.train_labels) == [30] * 10


def test_accepts_the_batch_folder_itself(synthetic_root):
    data = load_cifar10(synthetic_root / "cifar-10-batches-py", allow_download=False)
    assert len(data.test_labels) == 100


def test_data_dir_resolution_order(monkeypatch, tmp_path):
    monkeypatch.setenv("CIFAR10_DIR", str(tmp_path))
    assert resolve_data_dir("flag") == resolve_data_dir("flag") and str(resolve_data_dir("flag")) == "flag"
    assert resolve_data_dir(None) == tmp_path
    monkeypatch.delenv("CIFAR10_DIR")
    assert str(resolve_data_dir(None)) == "data"


def test_split_is_stratified_disjoint_and_seeded(synthetic_root):
    labels = load_cifar10(synthetic_root, allow_download=False).train_labels
    train_idx, val_idx = split_indices(labels, 5, seed=0)
    assert class_counts(labels[val_idx]) == [5] * 10
    assert len(np.intersect1d(train_idx, val_idx)) == 0 and len(train_idx) + len(val_idx) == len(labels)
    assert np.array_equal(val_idx, split_indices(labels, 5, seed=0)[1])
    assert not np.array_equal(val_idx, split_indices(labels, 5, seed=1)[1])


def test_too_few_images_for_validation(synthetic_root):
    labels = load_cifar10(synthetic_root, allow_download=False).train_labels
    with pytest.raises(UserError, match="val_per_class"):
        split_indices(labels, 30, seed=0)


def test_channel_stats_match_numpy(synthetic_root):
    images = load_cifar10(synthetic_root, allow_download=False).train_images
    mean, std = channel_stats(images)
    scaled = images.astype(np.float64) / 255
    np.testing.assert_allclose(mean, scaled.mean(axis=(0, 2, 3)), atol=1e-12)
    np.testing.assert_allclose(std, scaled.std(axis=(0, 2, 3)), atol=1e-12)


def test_normalised_train_split_has_zero_mean_unit_std(synthetic_root):
    data = load_cifar10(synthetic_root, allow_download=False)
    splits = make_splits(data, 5, 0, "cpu")
    x = splits.train.images
    assert x.dtype == torch.float32 and x.shape == (250, 3, 32, 32)
    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3, rtol=0)
    assert splits.info["sizes"] == {"train": 250, "validation": 50, "test": 100}
    torch.testing.assert_close(normalise(data.test_images, splits.mean, splits.std), splits.test.images)


def test_batch_indices_cover_every_image_once():
    batches = batch_indices(1000, 300, torch.Generator().manual_seed(0), "cpu")
    assert [len(b) for b in batches] == [300, 300, 300, 100]
    assert torch.equal(torch.cat(batches).sort().values, torch.arange(1000))
    again = batch_indices(1000, 300, torch.Generator().manual_seed(0), "cpu")
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))


def test_augment_flip_and_crop_are_shifts_and_mirrors():
    torch.manual_seed(0)
    x = torch.randn(64, 3, 32, 32)
    flipped = augment(x, ["flip"], translate=4)
    for a, b in zip(x, flipped, strict=True):
        assert torch.equal(a, b) or torch.equal(a.flip(2), b)
    assert not torch.equal(flipped, x)
    cropped = augment(x, ["crop"], translate=4)
    assert cropped.shape == x.shape
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for a, b in zip(padded, cropped, strict=True):
        assert any(torch.equal(a[:, dy : dy + 32, dx : dx + 32], b) for dy in range(9) for dx in range(9))


def test_flip_and_crop_together_draw_every_mirror_and_shift():
    torch.manual_seed(0)
    x = torch.randn(2000, 3, 32, 32)
    out = augment(x, ["flip", "crop"], translate=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    drawn = set()
    for a, b in zip(padded, out, strict=True):
        found = [(m, dy, dx) for m in (False, True) for dy in range(5) for dx in range(5)
                 if torch.equal((a.flip(2) if m else a)[:, dy : dy + 32, dx : dx + 32], b)]
        assert len(found) == 1
        drawn.add(found[0])
    assert len(drawn) == 50


def test_translate_bounds_the_shift():
    torch.manual_seed(0)
    x = torch.randn(256, 3, 32, 32)
    shifted = augment(x, ["crop"], translate=1)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    offsets = set()
    for a, b in zip(padded, shifted, strict=True):
        found = [(dy, dx) for dy in range(3) for dx in range(3) if torch.equal(a[:, dy : dy + 32, dx : dx + 32], b)]
        assert len(found) == 1
        offsets.add(found[0])
    assert len(offsets) == 9  # every shift of at most one pixel occurs, none larger


def test_rotate_and_zoom_is_exact_where_the_pixel_grid_maps_onto_itself():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    ones = torch.ones(4)
    assert torch.allclose(rotate_and_zoom(x, 0 * ones, ones), x, atol=1e-5)
    left, right = (rotate_and_zoom(x, sign * math.pi / 2 * ones, ones) for sign in (1, -1))
    assert torch.allclose(left, x.rot90(1, (2, 3)), atol=1e-5) and torch.allclose(right, x.rot90(-1, (2, 3)), atol=1e-5)
    shrunk = rotate_and_zoom(x, 0 * ones, ones / 2)  # each output pixel of the centre is the mean of 2 x 2 inputs
    assert torch.allclose(shrunk[:, :, 8:24, 8:24], torch.nn.functional.avg_pool2d(x, 2), atol=1e-5)
    border = torch.ones(32, 32, dtype=torch.bool)
    border[8:24, 8:24] = False
    assert torch.equal(shrunk[:, :, border], torch.zeros_like(shrunk[:, :, border]))  # zero: the mean colour


def test_affine_augmentation_draws_a_rotation_and_zoom_per_image_within_its_bounds():
    x = torch.randn(64, 3, 32, 32)
    assert torch.allclose(augment(x, ["affine"], translate=4, rotate=0.0, zoom=0.0), x, atol=1e-5)
    torch.manual_seed(0)
    turned = augment(x, ["affine"], translate=4, rotate=30.0, zoom=0.0)
    torch.manual_seed(0)
    assert torch.equal(augment(x, ["affine"], translate=4, rotate=30.0, zoom=0.0), turned)  # seeded
    torch.manual_seed(0)
    angles = (torch.rand(2, 64) * 2 - 1)[0] * math.radians(30.0)
    assert torch.allclose(turned, rotate_and_zoom(x, angles, torch.ones(64)), atol=1e-6)
    assert angles.abs().max() <= math.radians(30.0) and len(set(angles.tolist())) == 64
    torch.manual_seed(0)
    zoomed = augment(x, ["affine", "flip"], translate=4, rotate=0.0, zoom=0.2)
    assert zoomed.shape == x.shape and not torch.allclose(zoomed, x, atol=1e-3)


def test_colour_jitter_is_torchvisions_with_a_factor_per_image():
    from torchvision.transforms.v2 import functional as F

    mean, std = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
    pixels = 0.35 + 0.2 * torch.rand(16, 3, 32, 32)  # no adjustment below pushes a pixel out of [0, 1]
    x = normalise(pixels * 255, mean, std)
    assert torch.allclose(augment(x, ["colour"], translate=4, colour=0.0, normalisation=(mean, std)), x, atol=1e-5)
    torch.manual_seed(0)
    jittered = augment(x, ["colour"], translate=4, colour=0.3, normalisation=(mean, std))
    torch.manual_seed(0)
    factors = (1 + (torch.rand(3, 16) * 2 - 1) * 0.3).tolist()
    assert all(0.7 <= f <= 1.3 for row in factors for f in row) and len(set(factors[0])) == 16
    for i, (brightness, contrast, saturation) in enumerate(zip(*factors, strict=True)):
        expected = F.adjust_saturation(F.adjust_contrast(F.adjust_brightness(pixels[i], brightness), contrast),
                                       saturation)
        assert expected.min() > 0 and expected.max() < 1
        assert torch.allclose(jittered[i], normalise(expected * 255, mean, std)[0], atol=1e-5)


def test_colour_jitter_keeps_pixels_in_range():
    mean, std = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
    x = normalise(torch.randint(64, 192, (64, 3, 32, 32)).float(), mean, std)  # pixels in [0.25, 0.75]
    torch.manual_seed(0)
    pixels = augment(x, ["colour"], translate=4, colour=1.0, normalisation=(mean, std)) * torch.tensor(std).view(
        1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    assert pixels.min() > -1e-6 and pixels.max() < 1 + 1e-6
    assert (pixels < 1e-6).any() and (pixels > 1 - 1e-6).any()  # strength 1 pushes some pixels out: clamped


def test_mixup_blends_each_image_with_its_neighbour_in_the_label_proportion():
    torch.manual_seed(0)
    x, labels = torch.randn(32, 3, 32, 32), torch.arange(32) % 10
    mixed, target = mix(x, labels, "mixup", alpha=1.0)
    assert target.shape == (32, 10) and torch.allclose(target.sum(1), torch.ones(32))
    own = target[torch.arange(32), labels]  # neighbours have different labels here
    expected = own.view(-1, 1, 1, 1) * x + (1 - own.view(-1, 1, 1, 1)) * x.roll(1, 0)
    assert torch.allclose(mixed, expected, atol=1e-6)


def test_cutmix_pastes_a_box_whose_area_is_the_label_weight():
    torch.manual_seed(1)
    x, labels = torch.randn(16, 3, 32, 32), torch.arange(16) % 10
    mixed, target = mix(x, labels, "cutmix", alpha=1.0)
    from_neighbour = (mixed == x.roll(1, 0)).all(1) & (mixed != x).any(1)  # pixels taken from the other image
    kept = (mixed == x).all(1)
    assert (from_neighbour | kept).all()
    neighbour_share = from_neighbour.float().mean((1, 2))
    assert torch.allclose(target[torch.arange(16), labels.roll(1)], neighbour_share)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: f.unlink(), "data_batch_3 is missing"),
        (lambda f: f.write_bytes(f.read_bytes()[:1000]), "truncated or corrupt"),
        (lambda f: f.write_bytes(b"not a pickle"), "truncated or corrupt"),
        (lambda f: f.write_bytes(b"\0" * 31035999), r"corrupt \(md5 checksum mismatch\)"),
        (lambda f: write_batch(f, np.zeros((4, 3, 16, 16), np.uint8), [0] * 4), "expected N x 3072"),
        (lambda f: write_batch(f, np.zeros((4, 3, 32, 32), np.uint8), [0, 1, 2, 10]), r"outside 0\.\.9"),
        (lambda f: write_batch(f, np.zeros((4, 3, 32, 32), np.uint8), [0, 1]), "2 labels for 4 images"),
        (lambda f: f.write_bytes(b"cos\nsystem\n(S'true'\ntR."), "forbidden object"),
    ],
)
def test_bad_batch_files_name_the_file(synthetic_root, damage, message):
    damage(synthetic_root / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(UserError, match=message) as info:
        load_cifar10(synthetic_root, allow_download=False)
    assert "data_batch_3" in str(info.value) and "\n" not in str(info.value)


def test_missing_folder_without_download(tmp_path):
    with pytest.raises(UserError, match="does not exist.*--data-dir or CIFAR10_DIR"):
        load_cifar10(tmp_path / "nowhere", allow_download=False)


def test_offline_download_fails_clearly(tmp_path, monkeypatch):
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(UserError, match="downloading it failed"):
        load_cifar10(tmp_path / "fresh", allow_download=True)


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "cifar_mlp.cli", *args], capture_output=True, text=True, env=env)


def test_data_check_cli(synthetic_root):
    result = run_cli("data-check", "--data-dir", str(synthetic_root), "--val-per-class", "5", "--no-download")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^validation\s+50\s+5\s", result.stdout, re.M) and "train-split mean" in result.stdout


def test_data_check_cli_error_is_one_line(synthetic_root):
    (synthetic_root / "cifar-10-batches-py" / "test_batch").write_bytes(b"garbage")
    result = run_cli("data-check", "--data-dir", str(synthetic_root), "--no-download")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "test_batch" in result.stderr


def test_real_dataset_split_and_statistics(real_root):
    data = load_cifar10(real_root, allow_download=False)
    splits = make_splits(data, 500, 0, "cpu")
    assert splits.info["sizes"] == {"train": 45000, "validation": 5000, "test": 10000}
    assert class_counts(splits.validation.labels) == [500] * len(CLASSES)
    assert len(np.intersect1d(splits.train.indices, splits.validation.indices)) == 0
    np.testing.assert_allclose(splits.mean, [0.4914, 0.4822, 0.4465], atol=2e-3)
    np.testing.assert_allclose(splits.std, [0.2470, 0.2435, 0.2616], atol=2e-3)
    same = split_indices(data.train_labels, 500, 0)[1]
    other = split_indices(data.train_labels, 500, 1)[1]
    assert np.array_equal(same, splits.validation.indices) and not np.array_equal(same, other)
