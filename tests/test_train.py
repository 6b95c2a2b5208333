import copy
import dataclasses
import math

import pytest
import torch
from lion_pytorch import Lion
from torch import nn

from cifar_mlp import UserError, checkpoint, rundir, train
from cifar_mlp.config import Config, ModelConfig, OptimConfig
from cifar_mlp.data import load_cifar10, make_splits
from cifar_mlp.model import MLP, average_probabilities, build_model, predict_logits
from cifar_mlp.rundir import read_history
from cifar_mlp.train import lr_factor

TIMING = ("epoch_time_s", "samples_per_s")


def without_timing(history):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in history]


def run(cfg, run_dir, root, **kwargs):
    return train.train(cfg, run_dir, root, allow_download=False, quiet=True, **kwargs)


def test_training_lowers_the_loss_and_writes_the_run(tiny_config, synthetic_root, tmp_path):
    history = run(tiny_config, tmp_path / "run", synthetic_root)
    assert len(history) == 4
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    for name in ("config.json", "environment.json", "history.csv", "loss_plot.png", "checkpoints/last.pt",
                 "checkpoints/best.pt"):
        assert (tmp_path / "run" / name).is_file(), name
    assert without_timing(read_history(tmp_path / "run")) == without_timing(history)


def test_checkpoint_contents(tiny_config, synthetic_root, tmp_path):
    history = run(tiny_config, tmp_path / "run", synthetic_root)
    last = checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")
    best = checkpoint.load(tmp_path / "run" / "checkpoints" / "best.pt")
    assert last["epoch"] == 4 and len(last["mean"]) == 3 and last["classes"][3] == "cat"
    assert {"model", "optimizer", "rng", "config", "split", "history"} <= last.keys()
    best_epoch = min(history, key=lambda r: r["val_loss"])["epoch"]
    assert best["epoch"] == best_epoch
    assert not list((tmp_path / "run" / "checkpoints").glob(".*tmp*"))


def test_same_seed_same_history_other_seed_differs(tiny_config, synthetic_root, tmp_path):
    a = run(tiny_config, tmp_path / "a", synthetic_root)
    b = run(tiny_config, tmp_path / "b", synthetic_root)
    assert without_timing(a) == without_timing(b)
    other = dataclasses.replace(tiny_config, train=dataclasses.replace(tiny_config.train, seed=1))
    assert without_timing(run(other, tmp_path / "c", synthetic_root)) != without_timing(a)


@pytest.mark.parametrize("data, optim, model, train_", [
    ({"augment": ["affine", "flip", "crop", "colour"]}, {"schedule": "cosine", "warmup_epochs": 1.0}, {}, {}),
    ({"mix": "cutmix"}, {"schedule": "onecycle", "warmup_epochs": 1.0, "ema_decay": 0.9}, {},
     {"recalibrate_norm": 100}),
    ({}, {"schedule": "onecycle", "warmup_epochs": 1.0},
     {"members": 2, "whitening": "project", "whitening_dims": 40, "input_dropout": 0.2, "pretrain_epochs": 2},
     {"recalibrate_norm": 100}),
    ({}, {"optimizer": "muon", "schedule": "onecycle", "warmup_epochs": 1.0}, {"members": 2, "bottleneck": 16}, {}),
    ({}, {"optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4}, {}, {}),
    ({}, {"optimizer": "lion", "lr": 3e-4, "weight_decay": 0.1}, {}, {}),
    ({}, {"mutual_weight": 1.0, "sam_rho": 0.05}, {"members": 2}, {}),
])
def test_resume_equals_an_uninterrupted_run(tiny_config, synthetic_root, tmp_path, monkeypatch, data, optim, model,
                                            train_):
    cfg = dataclasses.replace(
        tiny_config,
        data=dataclasses.replace(tiny_config.data, **data),
        optim=dataclasses.replace(tiny_config.optim, **optim),
        model=dataclasses.replace(tiny_config.model, **model),
        train=dataclasses.replace(tiny_config.train, **train_),
    )
    full = run(cfg, tmp_path / "full", synthetic_root)

    real_write = rundir.write_history
    calls = []

    def interrupt_after_two_epochs(rows, path):
        real_write(rows, path)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(rundir, "write_history", interrupt_after_two_epochs)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "cut", synthetic_root)
    monkeypatch.setattr(rundir, "write_history", real_write)
    assert (tmp_path / "cut" / "loss_plot.png").is_file()
    resumed = run(cfg, tmp_path / "cut", synthetic_root, resume=True)

    assert without_timing(resumed) == without_timing(full)
    a = checkpoint.load(tmp_path / "full" / "checkpoints" / "last.pt")
    b = checkpoint.load(tmp_path / "cut" / "checkpoints" / "last.pt")
    for weights in ("model", "trained_model") if "ema_decay" in optim else ("model",):
        assert all(torch.equal(a[weights][k], b[weights][k]) for k in a[weights])


@pytest.mark.parametrize(("trained_with", "resumed_with", "message"), [(0.9, 0.0, "trained with an EMA"),
                                                                     (0.0, 0.9, "trained without an EMA")])
def test_resume_refuses_a_changed_ema_setting(tiny_config, synthetic_root, tmp_path, trained_with, resumed_with,
                                              message):
    def with_ema(decay, epochs):
        return dataclasses.replace(tiny_config, optim=dataclasses.replace(tiny_config.optim, ema_decay=decay),
                                   train=dataclasses.replace(tiny_config.train, epochs=epochs))

    run(with_ema(trained_with, 2), tmp_path / "run", synthetic_root)
    with pytest.raises(UserError, match=f"{message}.*keep optim.ema_decay"):
        run(with_ema(resumed_with, 3), tmp_path / "run", synthetic_root, resume=True)


def test_ema_weights_are_the_ones_validated_and_saved(tiny_config, synthetic_root, tmp_path):
    cfg = dataclasses.replace(tiny_config, optim=dataclasses.replace(tiny_config.optim, ema_decay=0.9))
    history = run(cfg, tmp_path / "run", synthetic_root)
    last = checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")
    averaged = checkpoint.build_model(last, "last.pt")
    trained = checkpoint.build_model({**last, "model": last["trained_model"]}, "last.pt")
    splits = make_splits(load_cifar10(synthetic_root, allow_download=False), 5, 0, "cpu")
    val = splits.validation

    def val_loss(model):
        return torch.nn.functional.cross_entropy(predict_logits(model, val.images), val.labels).item()

    assert val_loss(averaged) == pytest.approx(history[-1]["val_loss"], rel=1e-5)
    assert val_loss(trained) != pytest.approx(history[-1]["val_loss"], rel=1e-3)
    steps = 4 * math.ceil(len(splits.train.labels) / 64)
    assert last["ema_updates"] == steps


def test_refuses_to_overwrite_unless_asked(tiny_config, synthetic_root, tmp_path):
    run(tiny_config, tmp_path / "run", synthetic_root)
    with pytest.raises(UserError, match="already exists.*--resume.*--overwrite"):
        run(tiny_config, tmp_path / "run", synthetic_root)
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    run(tiny_config, tmp_path / "run", synthetic_root, overwrite=True)


def test_resume_without_checkpoint(tiny_config, synthetic_root, tmp_path):
    with pytest.raises(UserError, match="cannot resume"):
        run(tiny_config, tmp_path / "empty", synthetic_root, resume=True)


def test_checkpoint_from_another_architecture(tiny_config, synthetic_root, tmp_path):
    run(tiny_config, tmp_path / "run", synthetic_root)
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    ckpt = checkpoint.load(path)
    with pytest.raises(UserError, match="different architecture") as info:
        checkpoint.build_model(ckpt, path, ModelConfig(widths=[128, 32]))
    assert "\n" not in str(info.value)


def test_ensemble_members_train_on_their_own_losses_and_load_back(tiny_config, synthetic_root, tmp_path):
    cfg = dataclasses.replace(tiny_config, model=dataclasses.replace(tiny_config.model, members=3, dropout=0.0))
    ensemble = build_model(cfg.model)
    x, y = torch.randn(32, 3072), torch.randint(0, 10, (32,))
    loss_fn = nn.CrossEntropyLoss()
    logits, loss = train.forward_loss(ensemble, loss_fn, x, y, bf16=False)
    member_losses = [loss_fn(member(x), y) for member in ensemble]
    assert torch.allclose(loss, torch.stack(member_losses).mean())
    assert torch.allclose(logits, average_probabilities(ensemble.member_logits(x)))
    loss.backward()
    alone = copy.deepcopy(ensemble[1])
    alone.zero_grad()
    loss_fn(alone(x), y).backward()  # member 1's gradient does not depend on the other members
    assert torch.allclose(3 * ensemble[1].head.weight.grad, alone.head.weight.grad, atol=1e-6)

    history = run(cfg, tmp_path / "run", synthetic_root)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    ckpt = checkpoint.load(path)
    assert len(checkpoint.build_model(ckpt, path)) == 3
    with pytest.raises(UserError, match="different architecture than the config \\(mlp, members 1"):
        checkpoint.build_model(ckpt, path, dataclasses.replace(cfg.model, members=1))


def test_mutual_learning_pulls_each_member_towards_its_peers_held_constant():
    torch.manual_seed(0)
    logits = torch.randn(3, 8, 10, requires_grad=True)
    pairs = [nn.functional.kl_div(logits[k].log_softmax(1), logits[peer].detach().log_softmax(1),
                                  reduction="batchmean", log_target=True)
             for k in range(3) for peer in range(3) if peer != k]
    expected = torch.stack(pairs).mean()
    mutual = train.mutual_kl(logits)
    torch.testing.assert_close(mutual, expected)
    torch.testing.assert_close(torch.autograd.grad(mutual, logits)[0], torch.autograd.grad(expected, logits)[0])
    agreeing = logits[:1].detach().expand(3, -1, -1)
    assert train.mutual_kl(agreeing).abs().item() < 1e-6

    cfg = ModelConfig(widths=[32, 16], dropout=0.0, members=3)
    ensemble, x, y = build_model(cfg), torch.randn(16, 3072), torch.randint(10, (16,))
    loss_fn = nn.CrossEntropyLoss()
    _, independent = train.forward_loss(ensemble, loss_fn, x, y, bf16=False)
    _, mutual_loss = train.forward_loss(ensemble, loss_fn, x, y, bf16=False, mutual_weight=0.5)
    torch.testing.assert_close(mutual_loss, independent + 0.5 * train.mutual_kl(ensemble.member_logits(x)))


def test_members_learning_from_each_other_train_otherwise_than_alone(tiny_config, synthetic_root, tmp_path):
    cfg = dataclasses.replace(tiny_config, model=dataclasses.replace(tiny_config.model, members=2))
    alone = run(cfg, tmp_path / "alone", synthetic_root)
    mutual = run(dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, mutual_weight=1.0)),
                 tmp_path / "mutual", synthetic_root)
    assert mutual[-1]["train_loss"] < mutual[0]["train_loss"]
    assert without_timing(mutual) != without_timing(alone)


def test_corrupt_and_foreign_checkpoints(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(UserError, match="corrupt or not a PyTorch checkpoint"):
        checkpoint.load(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a cifar-mlp checkpoint"):
        checkpoint.load(tmp_path / "other.pt")
    with pytest.raises(UserError, match="not found"):
        checkpoint.load(tmp_path / "absent.pt")


def test_checkpoints_refuse_arbitrary_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="corrupt or not a PyTorch checkpoint"):
        checkpoint.load(tmp_path / "evil.pt")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_config, synthetic_root, tmp_path, monkeypatch):
    real_forward = MLP.forward
    calls = []

    def poisoned(self, x):
        out = real_forward(self, x)
        calls.append(1)
        return out * math.nan if len(calls) > 6 else out  # 4 train batches + 1 validation pass per epoch

    monkeypatch.setattr(MLP, "forward", poisoned)
    with pytest.raises(UserError, match="diverged.*epoch 2.*last good checkpoint"):
        run(tiny_config, tmp_path / "run", synthetic_root)
    assert checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")["epoch"] == 1


def test_lr_schedules():
    assert [lr_factor(s, 10, 0, "none") for s in (0, 9)] == [1.0, 1.0]
    assert [lr_factor(s, 10, 4, "none") for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 10, 4, "cosine") == 1.0 and lr_factor(7, 10, 4, "cosine") == pytest.approx(0.5)
    assert lr_factor(4, 10, 4, "onecycle") == 1.0 and lr_factor(8, 10, 4, "onecycle") == pytest.approx(1 / 3)


def test_train_cli_overrides_and_errors(synthetic_root, tmp_path, capsys):
    from cifar_mlp.cli import main

    args = ["train", "--run-dir", str(tmp_path / "run"), "--data-dir", str(synthetic_root), "--no-download",
            "--epochs", "2", "--lr", "0.003", "--batch-size", "50", "--device", "cpu", "--quiet",
            "--set", "model.widths=[32]", "--set", "data.val_per_class=5"]
    main(args)
    saved = checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")["config"]
    assert saved["model"]["widths"] == [32] and saved["train"]["batch_size"] == 50 and saved["optim"]["lr"] == 0.003
    assert "done: 2 epochs" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2 and "already exists" in capsys.readouterr().err
    main([*args[:-4], "--epochs", "3", "--resume"])
    assert checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")["epoch"] == 3
    with pytest.raises(SystemExit):
        main([*args[:2], str(tmp_path / "r2"), "--set", "train.epochs=0"])
    assert "train.epochs must be a finite number in [1, 1,000,000], got 0" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["pca", "project"])
def test_whitening_is_fitted_on_the_train_split_and_saved(kind, tiny_config, synthetic_root, tmp_path):
    cfg = dataclasses.replace(tiny_config, model=dataclasses.replace(tiny_config.model, whitening=kind,
                                                                      whitening_dims=40, whitening_eps=0.1))
    history = run(cfg, tmp_path / "run", synthetic_root)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    ckpt = checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["model"]["whiten_weight"].shape == (40, 3072) and ckpt["model"]["whiten_weight"].abs().sum() > 0
    model = checkpoint.build_model(ckpt, "last.pt")
    assert torch.equal(model.whiten_weight, ckpt["model"]["whiten_weight"])


def test_killing_a_run_leaves_a_resumable_checkpoint(synthetic_root, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "cifar_mlp.cli", "train", "--run-dir", str(run_dir), "--data-dir",
           str(synthetic_root), "--no-download", "--device", "cpu", "--epochs", "400", "--batch-size", "25",
           "--set", "model.widths=[256,256]", "--set", "data.val_per_class=5", "--quiet"]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (run_dir / "checkpoints" / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "--resume" in err and "Traceback" not in err
    epoch = checkpoint.load(run_dir / "checkpoints" / "last.pt")["epoch"]
    assert 1 <= epoch < 400 and (run_dir / "loss_plot.png").is_file()
    assert len(read_history(run_dir)) in (epoch - 1, epoch)  # the kill may fall between the two


def test_train_accuracy_under_mixup_counts_the_label_with_the_larger_share(tiny_config, synthetic_root, monkeypatch):
    cfg = dataclasses.replace(tiny_config, data=dataclasses.replace(tiny_config.data, mix="mixup"),
                              train=dataclasses.replace(tiny_config.train, batch_size=16))  # 16 mixing ratios
    split = make_splits(load_cifar10(synthetic_root, allow_download=False), 5, 0, "cpu").train
    targets = []
    real_mix = train.mix

    def recording_mix(*args):
        x, target = real_mix(*args)
        targets.append(target)
        return x, target

    class PredictsTheLargerShare(torch.nn.Module):
        """Its logits are the soft target itself, so its prediction is always the label with the larger share."""

        def __init__(self):
            super().__init__()
            self.model = MLP(cfg.model)

        def forward(self, x):
            return targets[-1] + 0 * self.model(x)

    monkeypatch.setattr(train, "mix", recording_mix)
    model = PredictsTheLargerShare()
    torch.manual_seed(0)
    _, correct, _, _ = train.train_epoch(model, train.make_optimizer(model, cfg), torch.nn.CrossEntropyLoss(), split,
                                         cfg, torch.Generator().manual_seed(0), epoch=1)
    assert correct.item() == len(split.labels)


def test_the_last_clean_epochs_train_on_the_images_as_they_are(tiny_config, synthetic_root):
    cfg = dataclasses.replace(tiny_config, data=dataclasses.replace(tiny_config.data, augment=["flip", "crop"],
                                                                   mix="mixup", clean_epochs=1),
                              train=dataclasses.replace(tiny_config.train, epochs=2, batch_size=16))
    split = make_splits(load_cifar10(synthetic_root, allow_download=False), 5, 0, "cpu").train
    seen = []

    class Recording(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = MLP(cfg.model)

        def forward(self, x):
            seen.append(x.clone())
            return self.model(x)

    def unchanged_images() -> int:
        """How many of the images the model saw are, to the bit, images of the train split."""
        flat, seen_flat = split.images.flatten(1), torch.cat(seen).flatten(1)
        return int((seen_flat[:, None] == flat[None]).all(-1).any(-1).sum())

    model = Recording()
    optimizer, loss_fn = train.make_optimizer(model, cfg), torch.nn.CrossEntropyLoss()
    torch.manual_seed(0)
    for epoch in (1, 2):
        seen.clear()
        train.train_epoch(model, optimizer, loss_fn, split, cfg, torch.Generator().manual_seed(epoch), epoch=epoch)
        assert (unchanged_images() == len(split.labels)) == (epoch == 2)


def test_the_last_dropout_off_epochs_train_with_every_dropout_off(tiny_config, synthetic_root):
    cfg = dataclasses.replace(tiny_config, model=dataclasses.replace(tiny_config.model, dropout=0.5, input_dropout=0.2),
                              train=dataclasses.replace(tiny_config.train, epochs=3, batch_size=16,
                                                        dropout_off_epochs=2))
    split = make_splits(load_cifar10(synthetic_root, allow_download=False), 5, 0, "cpu").train
    model = MLP(cfg.model)
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    changed = []
    for module in dropouts:
        module.register_forward_hook(lambda _, inputs, output: changed.append(not torch.equal(inputs[0], output)))
    optimizer, loss_fn = train.make_optimizer(model, cfg), torch.nn.CrossEntropyLoss()
    torch.manual_seed(0)
    for epoch in (1, 2, 3):
        changed.clear()
        train.train_epoch(model, optimizer, loss_fn, split, cfg, torch.Generator().manual_seed(epoch), epoch=epoch)
        assert changed and all(changed) == (epoch == 1) and any(changed) == (epoch == 1)


def test_sam_takes_the_gradient_at_the_perturbed_weights_and_restores_them():
    torch.manual_seed(0)
    model = MLP(ModelConfig(widths=[32, 16], dropout=0.0)).train()
    x, y, rho = torch.randn(64, 3072), torch.randint(10, (64,)), 0.5
    loss_fn = nn.CrossEntropyLoss()
    loss_fn(model(x), y).backward()
    after_first_pass = copy.deepcopy(model.state_dict())
    reference = copy.deepcopy(model)
    grads = [p.grad.clone() for p in model.parameters()]
    norm = torch.cat([g.flatten() for g in grads]).norm()
    with torch.no_grad():
        for p, g in zip(reference.parameters(), grads, strict=True):
            p += rho * g / norm
    reference.zero_grad()
    loss_fn(reference(x), y).backward()

    train.sharpness_aware_gradients(model, loss_fn, x, y, rho, bf16=False)
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)
    for key, value in model.state_dict().items():  # weights restored, BatchNorm running statistics untouched
        if key.endswith("num_batches_tracked"):  # a pass counter, unused with a fixed momentum
            continue
        assert torch.equal(value, after_first_pass[key]), key
    assert not torch.allclose(model.blocks[0][0].weight.grad, grads[0])  # not the plain gradient


def test_batch_norm_momentum_is_restored_even_when_the_block_fails():
    model = MLP(ModelConfig(widths=[32, 16]))
    model.blocks[1][2].momentum = 0.3
    with pytest.raises(RuntimeError), train.batch_norm_momentum(model, None) as norms:
        assert [m.momentum for m in norms] == [None, None]
        raise RuntimeError
    assert [m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm1d)] == [0.1, 0.3]


def test_recalibrated_statistics_are_the_mean_and_variance_each_batch_norm_sees_with_dropout_off():
    torch.manual_seed(0)
    model = MLP(ModelConfig(widths=[32, 16], dropout=0.5)).train()
    x = torch.randn(300, 3072)
    reference = copy.deepcopy(model)
    for m in reference.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    inputs = []
    for m in reference.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.register_forward_hook(lambda _, args, __: inputs.append(args[0]))
    reference(x)  # one batch: each norm normalises by the batch's statistics, as the recalibration's one pass does
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "batches" not in k}

    train.recalibrate_batch_norm(model, x, batch_size=len(x))
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(norms) == len(inputs) == 2
    for m, seen in zip(norms, inputs, strict=True):
        torch.testing.assert_close(m.running_mean, seen.mean(0))
        torch.testing.assert_close(m.running_var, seen.var(0))
        assert m.momentum == 0.1
    assert model.training and all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())

    train.recalibrate_batch_norm(model, x, batch_size=100)  # 3 batches of 100 images: their statistics averaged
    torch.testing.assert_close(norms[0].running_mean, inputs[0].mean(0))
    chunks = inputs[0].tensor_split(3)
    torch.testing.assert_close(norms[0].running_var, torch.stack([c.var(0) for c in chunks]).mean(0))


def test_recalibrating_the_norms_changes_only_their_statistics_and_what_is_validated(tiny_config, synthetic_root,
                                                                                     tmp_path):
    cfg = dataclasses.replace(tiny_config, model=dataclasses.replace(tiny_config.model, dropout=0.5))
    plain = run(cfg, tmp_path / "plain", synthetic_root)
    recalibrated = run(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, recalibrate_norm=120)),
                       tmp_path / "recalibrated", synthetic_root)
    assert [(r["train_loss"], r["train_acc"]) for r in recalibrated] == [(r["train_loss"], r["train_acc"])
                                                                         for r in plain]
    assert all(a["val_loss"] != b["val_loss"] for a, b in zip(plain, recalibrated, strict=True))

    a = checkpoint.load(tmp_path / "plain" / "checkpoints" / "last.pt")
    b = checkpoint.load(tmp_path / "recalibrated" / "checkpoints" / "last.pt")
    statistics = {k for k in a["model"] if "running" in k or "num_batches" in k}
    assert len(statistics) == 6 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"].keys()
                                        - statistics)
    model = checkpoint.build_model(a, "plain")
    splits = make_splits(load_cifar10(synthetic_root, False), 5, 0, "cpu")
    train.recalibrate_batch_norm(model, splits.train.images[:120])
    assert all(torch.equal(model.state_dict()[k], b["model"][k]) for k in statistics)
    logits = predict_logits(model, splits.validation.images)
    assert b["history"][-1]["val_acc"] == (logits.argmax(1) == splits.validation.labels).float().mean().item()


def test_sam_and_input_dropout_train_and_resume_exactly(tiny_config, synthetic_root, tmp_path):
    cfg = dataclasses.replace(tiny_config, optim=dataclasses.replace(tiny_config.optim, sam_rho=0.05),
                              model=dataclasses.replace(tiny_config.model, input_dropout=0.1))
    full = run(cfg, tmp_path / "full", synthetic_root)
    assert full[-1]["train_loss"] < full[0]["train_loss"]
    short = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=2))
    run(short, tmp_path / "split", synthetic_root)
    resumed = run(cfg, tmp_path / "split", synthetic_root, resume=True)
    assert without_timing(resumed) == without_timing(full)


def test_bf16_on_cpu_trains_in_bf16_and_keeps_float32_weights(tiny_config, synthetic_root, tmp_path, monkeypatch):
    monkeypatch.setattr(train.environment, "cpu_has_bf16", lambda: True)  # emulated here if the CPU lacks it
    bf16 = dataclasses.replace(tiny_config, train=dataclasses.replace(tiny_config.train, bf16=True))
    low, full = run(bf16, tmp_path / "bf16", synthetic_root), run(tiny_config, tmp_path / "fp32", synthetic_root)
    assert without_timing(low) != without_timing(full)  # the autocast really changed the arithmetic
    assert low[-1]["train_loss"] < low[0]["train_loss"]
    assert abs(low[-1]["val_loss"] - full[-1]["val_loss"]) < 0.1 * full[-1]["val_loss"]
    weights = checkpoint.load(tmp_path / "bf16" / "checkpoints" / "last.pt")["model"]
    assert all(v.dtype in (torch.float32, torch.int64) for v in weights.values())
    assert rundir.read_environment(tmp_path / "bf16")["bf16_autocast"] is True


def test_bf16_on_a_cpu_without_native_bf16_trains_in_float32_and_says_so(tiny_config, synthetic_root, tmp_path,
                                                                         monkeypatch, capsys):
    """Emulated bf16 is many times slower than float32, so a preset with bf16 stays usable on any CPU."""
    monkeypatch.setattr(train.environment, "cpu_has_bf16", lambda: False)
    train.note_float32_fallback.cache_clear()
    bf16 = dataclasses.replace(tiny_config, train=dataclasses.replace(tiny_config.train, bf16=True))
    asked = run(bf16, tmp_path / "asked", synthetic_root)
    assert "no native bf16" in capsys.readouterr().err
    run(bf16, tmp_path / "again", synthetic_root)
    assert "bf16" not in capsys.readouterr().err  # once per process: a sweep's worker says it once, not per trial
    full = run(tiny_config, tmp_path / "fp32", synthetic_root)
    assert "bf16" not in capsys.readouterr().err
    assert without_timing(asked) == without_timing(full)
    assert rundir.read_config(tmp_path / "asked")["train"]["bf16"] is True  # what was asked for
    assert rundir.read_environment(tmp_path / "asked")["bf16_autocast"] is False  # what ran


def test_grad_norms_are_each_weight_layers_gradient_norm(tiny_config, synthetic_root, tmp_path):
    """One step per epoch (a batch holds the whole split) and no dropout: epoch 1's norms are those of the
    gradient of the loss on the whole train split at the initial weights, in any order of the images."""
    cfg = dataclasses.replace(tiny_config, model=dataclasses.replace(tiny_config.model, dropout=0.0),
                              train=dataclasses.replace(tiny_config.train, batch_size=1000, grad_norms=True))
    history = run(cfg, tmp_path / "run", synthetic_root)
    assert [k for k in history[0] if k.startswith(rundir.GRAD_NORM)] == ["grad_norm_1", "grad_norm_2", "grad_norm_3"]
    assert read_history(tmp_path / "run") == history
    splits = make_splits(load_cifar10(synthetic_root, allow_download=False), cfg.data.val_per_class,
                         cfg.data.split_seed, torch.device("cpu"))
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model)
    nn.functional.cross_entropy(model(splits.train.images), splits.train.labels).backward()
    expected = [m.weight.grad.norm().item() for m in model.modules() if isinstance(m, nn.Linear)]
    assert [history[0][f"grad_norm_{i}"] for i in (1, 2, 3)] == pytest.approx(expected, rel=1e-4)


def test_at_a_constant_learning_rate_a_short_run_is_the_start_of_a_longer_one(tiny_config, synthetic_root, tmp_path):
    """What the claims' learning-rate study rests on: it reads the grid's shorter cells from its longest runs."""
    longer = dataclasses.replace(tiny_config, train=dataclasses.replace(tiny_config.train, epochs=6))
    short, full = run(tiny_config, tmp_path / "short", synthetic_root), run(longer, tmp_path / "long", synthetic_root)
    assert without_timing(full[:4]) == without_timing(short)


def test_muon_steps_the_hidden_weight_matrices_and_adamw_the_rest_sgd_and_lion_all(tiny_config):
    cfg = dataclasses.replace(tiny_config, optim=dataclasses.replace(tiny_config.optim, optimizer="muon"),
                              model=dataclasses.replace(tiny_config.model, members=2, bottleneck=16))
    model = build_model(cfg.model)
    muon, adamw = train.make_optimizer(model, cfg).optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    hidden = [m.weight for member in model for m in member.blocks.modules() if isinstance(m, nn.Linear)]
    assert len(hidden) == 2 * 3  # per member: two blocks' Linear and the bottleneck between them
    in_muon = {id(p) for group in muon.param_groups for p in group["params"]}
    in_adamw = {id(p) for group in adamw.param_groups for p in group["params"]}
    assert in_muon == {id(p) for p in hidden}
    assert in_adamw == {id(p) for p in model.parameters()} - in_muon
    assert all(id(member.head.weight) in in_adamw for member in model)
    sgd = train.make_optimizer(model, dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, optimizer="sgd")))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.9
    lion = train.make_optimizer(model, dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, optimizer="lion")))
    assert isinstance(lion, Lion) and lion.defaults["weight_decay"] == cfg.optim.weight_decay
    assert {id(p) for group in lion.param_groups for p in group["params"]} == {id(p) for p in model.parameters()}


@pytest.mark.parametrize("optimizer_name", ["adamw", "sgd", "lion", "muon"])
@pytest.mark.parametrize("decay_biases_and_norms", [True, False])
def test_weight_decay_spares_biases_and_norms_when_asked(optimizer_name, decay_biases_and_norms):
    """With zero gradients a step is the decay alone: every weight matrix shrinks, and the biases and BatchNorm
    scales and shifts shrink only with optim.decay_biases_and_norms."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(widths=[16, 8], members=2))
    cfg = Config(optim=OptimConfig(optimizer=optimizer_name, lr=0.1, weight_decay=0.5,
                                   decay_biases_and_norms=decay_biases_and_norms))
    optimizer = train.make_optimizer(model, cfg)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
        if p.ndim == 1:  # BatchNorm's shifts start at 0, which decay cannot shrink
            nn.init.uniform_(p, 0.5, 1.5)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer.step()
    for name, p in model.named_parameters():
        shrunk = p.abs().sum() < before[name].abs().sum()
        assert shrunk if p.ndim == 2 or decay_biases_and_norms else torch.equal(p, before[name]), name


@pytest.mark.parametrize(("optimizer", "lr"), [("sgd", 0.05), ("muon", 3e-3), ("lion", 3e-4)])
def test_sgd_muon_and_lion_lower_the_loss_and_follow_the_schedule(tiny_config, synthetic_root, tmp_path, optimizer, lr):
    cfg = dataclasses.replace(tiny_config, optim=dataclasses.replace(
        tiny_config.optim, optimizer=optimizer, lr=lr, schedule="cosine"))
    history = run(cfg, tmp_path / "run", synthetic_root)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert [row["lr"] for row in history] == sorted((row["lr"] for row in history), reverse=True)
    adamw = run(tiny_config, tmp_path / "adamw", synthetic_root)
    assert without_timing(history) != without_timing(adamw)


def with_teacher(cfg, teacher, weight=0.5, temperature=1.0, **data):
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, teacher=str(teacher)),
                               optim=dataclasses.replace(cfg.optim, distill_weight=weight,
                                                         distill_temperature=temperature),
                               data=dataclasses.replace(cfg.data, **data))


@pytest.mark.parametrize(("weight", "temperature"), [(1.0, 1.0), (0.5, 3.0)])
def test_a_student_learns_from_its_teachers_probabilities_blended_with_the_labels(
        tiny_config, synthetic_root, tmp_path, monkeypatch, weight, temperature):
    teacher_cfg = dataclasses.replace(tiny_config, model=dataclasses.replace(tiny_config.model, members=2))
    run(teacher_cfg, tmp_path / "teacher", synthetic_root)
    ckpt = checkpoint.load(tmp_path / "teacher" / "checkpoints" / "best.pt")
    teacher = checkpoint.build_model(ckpt, "teacher")
    targets = []
    real_forward_loss = train.forward_loss

    def spy(model, loss_fn, x, target, *args):
        targets.append((x.clone(), target.clone()))
        return real_forward_loss(model, loss_fn, x, target, *args)

    monkeypatch.setattr(train, "forward_loss", spy)
    history = run(with_teacher(tiny_config, tmp_path / "teacher", weight, temperature), tmp_path / "s", synthetic_root)
    assert len(history) == 4 and targets
    for x, target in targets:
        from_teacher = (predict_logits(teacher, x) / temperature).softmax(1)
        from_label = (target - weight * from_teacher) / (1 - weight) if weight < 1 else torch.zeros_like(target)
        assert torch.allclose(target.sum(1), torch.ones(len(x)))
        if weight < 1:  # what is left is one label per image
            assert torch.allclose(from_label.max(1).values, torch.ones(len(x)), atol=1e-5)
        else:
            assert torch.allclose(target, from_teacher, atol=1e-6)
    environment = rundir.read_environment(tmp_path / "s")
    assert environment["teacher"] == {"checkpoint": str(tmp_path / "teacher" / "checkpoints" / "best.pt"),
                                      "epoch": ckpt["epoch"]}


def test_teachers_that_cannot_teach_are_one_line_errors(tiny_config, synthetic_root, tmp_path):
    other_split = dataclasses.replace(tiny_config, data=dataclasses.replace(tiny_config.data, split_seed=1))
    run(other_split, tmp_path / "other-split", synthetic_root)
    for teacher, message in ((tmp_path / "other-split", "was trained on another train/validation split"),
                             (tmp_path / "nowhere", "checkpoint .* not found")):
        with pytest.raises(UserError, match=message) as info:
            run(with_teacher(tiny_config, teacher), tmp_path / "student", synthetic_root, overwrite=True)
        assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="with a teacher, set data.augment = \\[\\]"):
        train.validate(with_teacher(tiny_config, tmp_path / "other-split", augment=["flip"]))
