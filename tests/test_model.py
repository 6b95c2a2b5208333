import pytest
import torch
from torch import nn

from cifar_mlp.config import ModelConfig
from cifar_mlp.model import MLP, Dropout, build_model, fit_whitening, parameter_count, predict_logits


def test_default_is_the_seed_architecture():
    model = MLP(ModelConfig())
    kinds = [type(m).__name__ for m in model.modules() if not list(m.children())]
    block = ["Linear", "ReLU", "BatchNorm1d", "Dropout"]
    assert kinds == block * 3 + ["Linear"]
    shapes = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    assert shapes == [(3072, 512), (512, 256), (256, 128), (128, 10)]
    assert all(m.p == 0.2 for m in model.modules() if isinstance(m, nn.Dropout))
    expected = 3072 * 512 + 512 + 512 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10 + 2 * (512 + 256 + 128)
    assert parameter_count(model) == expected


def test_outputs_logits_for_images_or_flat_vectors():
    model = MLP(ModelConfig()).eval()
    x = torch.randn(5, 3, 32, 32)
    assert model(x).shape == (5, 10)
    torch.testing.assert_close(model(x), model(x.flatten(1)))


@pytest.mark.parametrize("norm, norm_type", [("batch", nn.BatchNorm1d), ("layer", nn.LayerNorm), ("none", None)])
def test_configurable_depth_norm_activation_order(norm, norm_type):
    cfg = ModelConfig(widths=[64, 64, 64, 32], norm=norm, activation="gelu", order="norm-act", dropout=0.1)
    model = MLP(cfg)
    kinds = [type(m) for m in model.blocks[0]]
    expected = [nn.Linear, norm_type or nn.Identity, nn.GELU, Dropout]
    assert kinds == expected
    assert len(model.blocks) == 4 and model(torch.randn(4, 3072)).shape == (4, 10)


def test_residual_only_where_widths_match():
    model = MLP(ModelConfig(widths=[64, 64, 32], residual=True))
    assert [b.residual for b in model.blocks] == [False, True, False]


def test_linear_bottleneck_between_hidden_blocks_only():
    model = MLP(ModelConfig(widths=[256, 256, 128], bottleneck=32))
    shapes = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    assert shapes == [(3072, 256), (256, 32), (32, 256), (256, 32), (32, 128), (128, 10)]
    bottlenecks = [m for m in model.blocks if type(m) is nn.Linear]
    assert len(bottlenecks) == 2  # no activation after them: the next block reads their output as it is
    assert model(torch.randn(4, 3, 32, 32)).shape == (4, 10)
    assert len(MLP(ModelConfig(widths=[64], bottleneck=32)).blocks) == 1


def test_only_fully_connected_layers():
    allowed = (nn.Linear, nn.ReLU, nn.GELU, nn.BatchNorm1d, nn.LayerNorm, nn.Dropout, nn.Identity, nn.Sequential)
    model = MLP(ModelConfig(widths=[128, 128], residual=True, norm="layer"))
    assert all(isinstance(m, allowed + (MLP,)) for m in model.modules())


def test_predict_logits_uses_eval_mode_and_restores_it():
    model = MLP(ModelConfig(widths=[16])).train()
    x = torch.randn(10, 3072)
    logits = predict_logits(model, x, batch_size=3)
    assert model.training
    model.eval()
    torch.testing.assert_close(logits, model(x))


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropout_keeps_one_minus_p_and_rescales(p):
    torch.manual_seed(0)
    layer = Dropout(p)
    x = torch.ones(1000, 301, requires_grad=True)
    y = layer(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.005
    scale = y[kept].unique()
    assert len(scale) == 1 and abs(scale.item() - 1 / (1 - p)) < 1e-4
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())
    assert not torch.equal(kept, layer(x) != 0)  # a fresh mask every call
    layer.eval()
    assert torch.equal(layer(x), x)


@pytest.mark.parametrize("p", [0.2, 0.3, 0.5])
def test_dropout_in_bf16_keeps_the_expected_activation(p):
    """bf16 holds 1 / 0.7 only to 0.3%: the mask stays bf16, and the activation's mean stays 1."""
    torch.manual_seed(0)
    y = Dropout(p)(torch.ones(2000, 1000, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16
    kept = y != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.004
    assert len(y[kept].unique()) == 1
    assert abs(y.float().mean().item() - 1) < 0.003


def test_dropout_masks_are_independent_across_columns():
    torch.manual_seed(0)
    kept = (Dropout(0.5)(torch.ones(20000, 6)) != 0).float()
    corr = torch.corrcoef(kept.T)
    assert (corr - torch.eye(6)).abs().max() < 0.05


@pytest.mark.parametrize("kind, dims", [("zca", 20), ("pca", 8)])
def test_whitening_decorrelates_the_training_inputs(kind, dims):
    torch.manual_seed(0)
    x = torch.randn(5000, 20) @ torch.randn(20, 20) + 3
    weight, bias = fit_whitening(x, ModelConfig(whitening=kind, whitening_dims=dims, whitening_eps=1e-6))
    z = x @ weight.T + bias
    assert z.shape == (5000, dims)
    torch.testing.assert_close(z.mean(0), torch.zeros(dims), atol=1e-3, rtol=0)
    torch.testing.assert_close(torch.cov(z.T), torch.eye(dims), atol=2e-3, rtol=0)
    if kind == "zca":  # ZCA is symmetric: the whitening closest to the original pixels
        torch.testing.assert_close(weight, weight.T, atol=1e-5, rtol=0)
    else:  # PCA keeps the directions of largest variance first
        variances = torch.linalg.eigvalsh(torch.cov(x.T)).flip(0)[:dims]
        direction = weight[0] / weight[0].norm()
        assert (direction @ torch.cov(x.T) @ direction).item() == pytest.approx(variances[0].item(), rel=1e-3)


def test_projection_keeps_the_top_components_at_their_relative_scale():
    torch.manual_seed(0)
    x = torch.randn(5000, 20) @ torch.randn(20, 20) + 3
    weight, bias = fit_whitening(x, ModelConfig(whitening="project", whitening_dims=6))
    z = x @ weight.T + bias
    top = torch.linalg.eigvalsh(torch.cov(x.T)).flip(0)[:6]
    torch.testing.assert_close(z.mean(0), torch.zeros(6), atol=1e-3, rtol=0)
    # decorrelated, largest variance first, unwhitened: the variances keep the eigenvalues' ratios, mean 1
    torch.testing.assert_close(torch.cov(z.T), torch.diag(top / top.mean()), atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("kind", ["pca", "project"])
def test_whitened_model_holds_the_map_as_buffers(kind):
    model = MLP(ModelConfig(widths=[16], whitening=kind, whitening_dims=100))
    assert model.whiten_weight.shape == (100, 3072) and model.blocks[0][0].in_features == 100
    assert "whiten_weight" in model.state_dict()
    assert all(p.shape != (100, 3072) for p in model.parameters())  # fixed: not trained, no weight decay
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 10)


def test_input_dropout_drops_input_features_in_training_only():
    assert MLP(ModelConfig(widths=[16])).input_dropout is None  # the seed model has no extra module
    model = MLP(ModelConfig(widths=[16], input_dropout=0.25))
    seen = []
    model.blocks[0][0].register_forward_hook(lambda module, args, out: seen.append(args[0]))
    x = torch.ones(64, 3072)
    model.train()(x)
    assert (seen[0] == 0).float().mean().item() == pytest.approx(0.25, abs=0.01)
    assert seen[0].max().item() == pytest.approx(1 / 0.75, rel=1e-3)
    model.eval()(x)
    assert torch.equal(seen[1], x)


def test_an_ensemble_averages_the_probabilities_of_independent_members():
    cfg = ModelConfig(widths=[16], members=3)
    ensemble = build_model(cfg).eval()
    assert isinstance(build_model(ModelConfig(widths=[16])), MLP) and len(ensemble) == 3
    assert not torch.equal(ensemble[0].head.weight, ensemble[1].head.weight)  # each starts from its own weights
    x = torch.randn(5, 3072)
    with torch.no_grad():
        mean_probs = torch.stack([member(x).softmax(1) for member in ensemble]).mean(0)
        assert ensemble.member_logits(x).shape == (3, 5, 10)
        assert torch.allclose(ensemble(x).softmax(1), mean_probs, atol=1e-6)
    assert parameter_count(ensemble) == 3 * parameter_count(ensemble[0])


def test_an_ensemble_fits_one_input_map_for_every_member():
    cfg = ModelConfig(widths=[16], members=2, whitening="project", whitening_dims=8)
    ensemble = build_model(cfg)
    images = torch.randn(200, 3, 32, 32)
    ensemble.fit_input_map(images)
    weight, bias = fit_whitening(images.flatten(1), cfg)
    assert ensemble.whitened and all(torch.equal(m.whiten_weight, weight) for m in ensemble)
    assert all(torch.equal(m.whiten_bias, bias) for m in ensemble)
    ensemble.eval()
    with torch.no_grad():  # the shared map is applied once, and changes no member's logits by a bit
        assert torch.equal(ensemble.member_logits(images), torch.stack([member(images) for member in ensemble]))
        torch.manual_seed(0)
        dropped = ensemble.train().member_logits(images)
        torch.manual_seed(0)
        assert torch.equal(dropped, torch.stack([member(images) for member in ensemble]))  # same dropout masks


def test_image_norm_standardises_each_image_before_the_fixed_first_layer():
    torch.manual_seed(0)
    images = torch.randn(200, 3, 32, 32) * (torch.rand(200, 1, 1, 1) * 3 + 1) + torch.randn(200, 1, 1, 1)
    cfg = ModelConfig(widths=[16], members=2, whitening="project", whitening_dims=8, image_norm=True)
    ensemble = build_model(cfg)
    flat = ensemble[0].flat_inputs(images)
    torch.testing.assert_close(flat.mean(1), torch.zeros(200), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.std(1, correction=0), torch.ones(200), atol=0, rtol=0.005)  # the floor: 1e-2
    assert torch.equal(ensemble[0].flat_inputs(torch.zeros(2, 3, 32, 32)), torch.zeros(2, 3072))  # a flat image
    ensemble.fit_input_map(images)  # the map is fitted on the standardised images: centred on their mean
    weight = ensemble[0].whiten_weight
    torch.testing.assert_close(ensemble[0].whiten_bias, -weight @ flat.mean(0))
    assert not torch.allclose(ensemble[0].whiten_bias, -weight @ images.flatten(1).mean(0), atol=1e-2)
    ensemble.eval()
    with torch.no_grad():  # brightness and contrast no longer reach the network
        torch.testing.assert_close(ensemble(images * 2.5 + 0.7), ensemble(images), atol=1e-2, rtol=0)
        plain = build_model(ModelConfig(widths=[16])).eval()
        assert not torch.allclose(plain(images * 2.5 + 0.7), plain(images), atol=1e-2)
        assert torch.equal(plain.flat_inputs(images), images.flatten(1))  # off by default: the pixels as they are
