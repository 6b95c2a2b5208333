import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cifar_mlp import UserError, checkpoint
from cifar_mlp.data import load_cifar10, make_splits
from cifar_mlp.evaluate import predict_probs
from cifar_mlp.predict import Classifier, classify_files, load_image, to_cifar


@pytest.fixture(scope="module")
def classifier(trained_run):
    return Classifier.from_checkpoint(trained_run[0])


def test_png_of_a_test_image_matches_the_evaluation_path(trained_run, classifier, tmp_path):
    run_dir, root = trained_run
    path = run_dir / "checkpoints" / "best.pt"
    ckpt = checkpoint.load(path)
    data = load_cifar10(root, allow_download=False)
    splits = make_splits(data, 5, 0, "cpu", ckpt["mean"], ckpt["std"])
    expected = predict_probs(checkpoint.build_model(ckpt, path), splits.test.images)
    files = []
    for i in (0, 7, 42):
        files.append(tmp_path / f"test_{i}.png")
        Image.fromarray(data.test_images[i].transpose(1, 2, 0)).save(files[-1])
    got = classifier.predict(files)
    np.testing.assert_allclose(got.probabilities, expected[[0, 7, 42]], atol=1e-5, rtol=0)
    assert got.labels.tolist() == expected[[0, 7, 42]].argmax(1).tolist()


def test_accepts_pil_images_arrays_and_paths(classifier, tmp_path):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(array).save(tmp_path / "a.png")
    results = [classifier.predict([x]).probabilities for x in
               (array, Image.fromarray(array), tmp_path / "a.png", str(tmp_path / "a.png"), array / 255.0)]
    for r in results[1:]:
        np.testing.assert_allclose(r, results[0], atol=1e-6)
    assert results[0].shape == (1, 10) and abs(results[0].sum() - 1) < 1e-9
    with pytest.raises(UserError, match="not an image"):
        classifier.predict([np.zeros((5, 5, 7), np.uint8)])


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "CMYK", "I;16", "LA", "1", "F"])
def test_every_mode_becomes_rgb_32x32(mode):
    image = Image.new("RGB", (64, 48), (200, 30, 30)).convert(mode)
    pixels = to_cifar(image)
    assert pixels.shape == (3, 32, 32) and pixels.dtype == np.uint8


def test_sixteen_bit_grey_keeps_its_brightness():
    image = Image.fromarray(np.full((40, 40), 32768, np.uint16))
    assert abs(int(to_cifar(image)[0, 0, 0]) - 128) <= 1


def test_transparency_is_composited_on_white_and_crop_is_centred():
    clear = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    assert (to_cifar(clear) == 255).all()
    wide = Image.new("RGB", (96, 32), (0, 0, 255))
    wide.paste((255, 0, 0), (32, 0, 64, 32))
    assert (to_cifar(wide)[0] == 255).all() and (to_cifar(wide)[2] == 0).all()


def test_exif_rotation_is_applied(tmp_path):
    image = Image.new("RGB", (64, 32), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 32, 32))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    image.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    loaded = load_image(tmp_path / "r.jpg")
    assert loaded.size == (32, 64)


def bad_files(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (40, 40), (10, 200, 10)).save(good)
    (tmp_path / "text.png").write_text("this is not an image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "truncated.png").write_bytes(good.read_bytes()[:60])
    bomb = tmp_path / "bomb.png"
    Image.new("1", (9000, 9000)).save(bomb)
    return good


def test_bad_files_each_get_one_line_and_others_still_run(classifier, tmp_path):
    good = bad_files(tmp_path)
    results, errors = classify_files(classifier, [str(tmp_path), str(tmp_path / "missing.png")])
    assert [r["path"] for r in results] == [str(good)]
    assert len(results[0]["top"]) == 3
    messages = {e["path"].rsplit("/", 1)[-1]: e["error"] for e in errors}
    assert "not an image" in messages["text.png"] and "empty file" in messages["empty.jpg"]
    assert "unreadable image" in messages["truncated.png"] and "decompression bomb" in messages["bomb.png"]
    assert "no such file" in messages["missing.png"]
    assert all("\n" not in m for m in messages.values())


def test_predict_cli_json_and_exit_codes(trained_run, tmp_path):
    run_dir, _ = trained_run
    good = bad_files(tmp_path)
    cmd = [sys.executable, "-m", "cifar_mlp.cli", "predict", "--checkpoint", str(run_dir)]
    ok = subprocess.run([*cmd, str(good), "--top-k", "2", "--json"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert len(doc["predictions"]) == 1 and len(doc["predictions"][0]["top"]) == 2 and doc["errors"] == []
    mixed = subprocess.run([*cmd, str(tmp_path)], capture_output=True, text=True)
    assert mixed.returncode == 1 and "Traceback" not in mixed.stderr
    assert mixed.stdout.startswith(f"{good}: ") and len(mixed.stderr.strip().splitlines()) == 4


def test_bad_checkpoints(trained_run, tmp_path):
    ckpt = checkpoint.load(trained_run[0] / "checkpoints" / "best.pt")
    ckpt["config"]["model"]["widths"] = [16]
    checkpoint.save_atomic(ckpt, tmp_path / "mismatch.pt")
    with pytest.raises(UserError, match="different architecture"):
        Classifier.from_checkpoint(tmp_path / "mismatch.pt")
    (tmp_path / "x.pt").write_bytes(b"\x00" * 10)
    for path, message in ((tmp_path / "x.pt", "corrupt"), (tmp_path / "none.pt", "not found"),
                          (tmp_path, "not found")):
        with pytest.raises(UserError, match=message):
            Classifier.from_checkpoint(path)
    result = subprocess.run([sys.executable, "-m", "cifar_mlp.cli", "predict", "--checkpoint", str(tmp_path / "x.pt"),
                             str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "corrupt" in result.stderr
