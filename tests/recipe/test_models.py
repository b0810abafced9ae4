"""Every registered model builds, runs forward on small inputs and rebuilds from its spec."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from raytune_opt import registry
from raytune_opt.recipe.errors import RecipeConfigError
from raytune_opt.recipe.models import MODELS, SPATIAL_DIMS, build_model, build_model_from_spec, model_spec
from raytune_opt.spec import schema

def test_registry_matches_the_schema():
    assert tuple(MODELS) == schema.MODELS
    assert schema.SIGNAL_MODELS == tuple(m for m in MODELS if 1 in SPATIAL_DIMS.get(m, (2,)))
    assert schema.IMAGE_MODELS == tuple(m for m in MODELS if 2 in SPATIAL_DIMS.get(m, (2,)))


@pytest.mark.parametrize("name", schema.IMAGE_MODELS)
@pytest.mark.parametrize("shape", [(3, 32), (1, 8)], ids=["3x32x32", "1x8x8"])
def test_forward_gives_one_logit_per_class(name, shape):
    # Every model works on 1x8x8 too: stride-2 stages reach 1x1 and stay there.
    channels, size = shape
    torch.manual_seed(0)
    model = build_model({"name": name, "width": 8, "depth": 2, "dropout": 0.1}, channels, 7, size)
    model.train()  # batch-norm in training mode must cope with a batch of 2
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_imagenet_stem_and_one_channel(name):
    model = build_model({"name": name, "cifar_stem": False}, 1, 3, 64).eval()
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 3)


def test_cifar_stem_keeps_resolution():
    model = build_model({"name": "resnet18", "cifar_stem": True}, 3, 10, 32)
    assert model.conv1.stride == (1, 1) and isinstance(model.maxpool, nn.Identity)
    mobile = build_model({"name": "mobilenet_v3_small", "cifar_stem": True}, 3, 10, 32)
    assert mobile.features[0][0].stride == (1, 1)


def test_squeeze_excitation_adds_one_block_per_residual_block():
    from torchvision.ops import SqueezeExcitation

    plain = build_model({"name": "resnet18"}, 3, 10, 32)
    se = build_model({"name": "resnet18", "squeeze_excitation": True}, 3, 10, 32)
    assert sum(isinstance(m, SqueezeExcitation) for m in plain.modules()) == 0
    assert sum(isinstance(m, SqueezeExcitation) for m in se.modules()) == 8
    assert se(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", ["mlp", "small_cnn", "resnet18", "resnet50"])
def test_every_relu_module_is_called_once(name):
    # pt2e quantization annotates modules by use: a ReLU shared by two places breaks it.
    model = build_model({"name": name, "squeeze_excitation": True}, 3, 10, 32).eval()
    calls: dict[int, int] = {}
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.register_forward_hook(lambda mod, i, o: calls.__setitem__(id(mod), calls.get(id(mod), 0) + 1))
    model(torch.randn(1, 3, 32, 32))
    assert calls and set(calls.values()) == {1}


@pytest.mark.parametrize("name", ["small_cnn", "resnet18"])
def test_spec_rebuilds_the_same_architecture(name):
    spec = model_spec({"name": name, "width": 8, "depth": 3, "squeeze_excitation": True}, (3, 32, 32), 5)
    assert all(isinstance(v, (str, int, float, bool)) for k, v in spec.items() if k != "input_shape")
    assert spec["input_shape"] == [3, 32, 32]  # plain data: a checkpoint loads with weights_only=True
    original = build_model({"name": name, "width": 8, "depth": 3, "squeeze_excitation": True}, 3, 5, 32)
    rebuilt = build_model_from_spec(spec)
    a, b = original.state_dict(), rebuilt.state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)


def test_small_cnn_depth_and_width():
    model = build_model({"name": "small_cnn", "width": 4, "depth": 3}, 1, 10, 8)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 8, 16]


def test_unknown_model():
    with pytest.raises(RecipeConfigError, match="not a model"):
        build_model({"name": "vgg"}, 3, 10, 32)


@pytest.mark.parametrize("width,depth,kernel_size", [(8, 1, 3), (16, 3, 5), (4, 8, 4), (32, 2, 15)])
def test_cnn1d_forward_shape_width_depth_and_kernel(width, depth, kernel_size):
    # depth 8 pools a 40-point signal down to 1 point and keeps going; even kernels pad asymmetrically.
    torch.manual_seed(0)
    model = build_model({"name": "cnn1d", "width": width, "depth": depth, "kernel_size": kernel_size, "dropout": 0.1},
                        1, 10, 40, spatial_dims=1).train()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d)]
    assert [c.out_channels for c in convs] == [width] * depth and {c.kernel_size for c in convs} == {(kernel_size,)}
    out = model(torch.randn(2, 1, 40))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_mlp_takes_signals_and_cnn1d_rebuilds_from_its_spec():
    mlp = build_model({"name": "mlp", "width": 16, "depth": 2}, 1, 10, 40, spatial_dims=1)
    assert mlp[1].in_features == 40 and mlp(torch.randn(3, 1, 40)).shape == (3, 10)
    spec = model_spec({"name": "cnn1d", "width": 8, "depth": 3, "kernel_size": 7}, (1, 40), 10)
    assert (spec["kernel_size"], spec["spatial_dims"]) == (7, 1)
    a, b = build_model_from_spec(spec).state_dict(), build_model(
        {"name": "cnn1d", "width": 8, "depth": 3, "kernel_size": 7}, 1, 10, 40, spatial_dims=1).state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    # A checkpoint written before input_shape and spatial_dims existed holds an image model.
    old = model_spec({"name": "small_cnn"}, (1, 8, 8), 10)
    del old["input_shape"], old["spatial_dims"], old["kernel_size"]
    assert build_model_from_spec(old)(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_a_model_refuses_the_other_kind_of_input():
    with pytest.raises(RecipeConfigError, match="small_cnn takes images .* but the data set gives 1-D signals"):
        build_model({"name": "small_cnn"}, 1, 10, 40, spatial_dims=1)
    with pytest.raises(RecipeConfigError, match="cnn1d takes 1-D signals .* use mlp, small_cnn, resnet18"):
        build_model({"name": "cnn1d"}, 1, 10, 8)


# --- the registry's conformance test, and user models by import path ------------------------

_SHAPES = {0: [(13,)], 1: [(1, 40), (2, 16)], 2: [(1, 8, 8), (3, 32, 32)]}


@pytest.mark.parametrize("name", list(registry.MODELS))
def test_every_registered_model_builds_and_gives_batch_by_num_classes(name):
    """One conformance test over the registry: every entry, on every input kind it declares."""
    entry = registry.MODELS[name]
    for dims in entry.meta["inputs"]:
        for shape in _SHAPES[dims]:
            torch.manual_seed(0)
            model = build_model_from_spec(model_spec({"name": name, "width": 8, "depth": 2}, shape, 5))
            assert isinstance(model, nn.Module)
            model.train()  # batch-norm in training mode must cope with a batch of 2
            with torch.no_grad():
                out = model(torch.randn(2, *shape))
            assert out.shape == (2, 5) and torch.isfinite(out).all(), (name, shape)


class _Spy(nn.Module):
    """A user model that records what it was given."""

    def __init__(self, hidden: int, num_classes: int, input_shape: tuple, scale: float = 1.0):
        super().__init__()
        self.given = {"hidden": hidden, "num_classes": num_classes, "input_shape": input_shape, "scale": scale}
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x)


def _not_a_module(num_classes: int):
    return "a string"


def test_a_user_model_gets_its_args_and_the_injected_names_it_declares():
    cfg = {"name": f"{__name__}:_Spy", "args": {"hidden": 12, "scale": 2.0}}
    model = build_model(cfg, 1, 10, 8)
    # in_channels is not in _Spy's signature: not passed.
    assert model.given == {"hidden": 12, "num_classes": 10, "input_shape": (1, 8, 8), "scale": 2.0}
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    signals = build_model({"name": f"{__name__}:_Spy", "args": {"hidden": 4}}, 2, 3, 40, spatial_dims=1)
    assert signals.given["input_shape"] == (2, 40)


def test_a_user_models_spec_records_its_target_and_args_and_rebuilds_it():
    cfg = {"name": f"{__name__}:_Spy", "args": {"hidden": 12}, "width": 99}
    spec = model_spec(cfg, (1, 8, 8), 10)
    assert spec == {"name": f"{__name__}:_Spy", "target": f"{__name__}:_Spy", "args": {"hidden": 12},
                    "input_shape": [1, 8, 8], "in_channels": 1, "num_classes": 10, "image_size": 8,
                    "spatial_dims": 2}
    cfg["args"]["hidden"] = 5  # the spec holds its own copy
    a, b = build_model_from_spec(spec).state_dict(), build_model({**cfg, "args": {"hidden": 12}}, 1, 10, 8).state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)


def test_a_user_model_that_returns_no_module_or_is_given_an_injected_name():
    with pytest.raises(RecipeConfigError, match="returned a str, not a torch.nn.Module"):
        build_model({"name": f"{__name__}:_not_a_module"}, 1, 10, 8)
    with pytest.raises(RecipeConfigError, match="model.args.num_classes is given by the data set"):
        build_model({"name": f"{__name__}:_Spy", "args": {"hidden": 3, "num_classes": 4}}, 1, 10, 8)


def test_a_user_model_that_does_not_import_is_a_recipe_error():
    with pytest.raises(RecipeConfigError, match=r"cannot import 'no_such_pkg_xyz:Net' \(No module named"):
        build_model({"name": "no_such_pkg_xyz:Net"}, 1, 10, 8)
    with pytest.raises(RecipeConfigError, match="not a model; use one of mlp, small_cnn"):
        build_model({"name": "no_such_model"}, 1, 10, 8)
