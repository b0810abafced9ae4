"""Models by name: a registry of builders, and a plain-dict spec to rebuild any of them.

Every model is randomly initialised (torchvision builders get ``weights=None``, so nothing
is ever downloaded). Each activation is its own module, used once: torchvision's ResNet
blocks call one ``self.relu`` several times, which pt2e quantization cannot annotate, so
the residual blocks are rebuilt here with one ReLU per use.

Most models take images (N, C, H, W); ``cnn1d`` takes 1-D signals (N, C, L) and ``mlp``
takes either (:data:`SPATIAL_DIMS`).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from raytune_opt.recipe.errors import RecipeConfigError

__all__ = ["MODELS", "SPATIAL_DIMS", "build_model", "model_spec", "build_model_from_spec"]

_SPEC_KEYS = ("name", "width", "depth", "kernel_size", "dropout", "cifar_stem", "squeeze_excitation")
_DEFAULTS = {"width": 32, "depth": 2, "kernel_size": 5, "dropout": 0.0, "cifar_stem": True,
             "squeeze_excitation": False}
_INPUT_KIND = {1: "1-D signals (N, C, L)", 2: "images (N, C, H, W)"}


def model_spec(model_cfg: dict, in_channels: int, num_classes: int, image_size: int, spatial_dims: int = 2) -> dict:
    """The plain-dict description of a model, stored in checkpoints to rebuild it.

    Args:
        model_cfg: the spec's ``model`` section; missing keys take the schema's defaults.
        in_channels: input channels (1 or 3).
        num_classes: outputs of the classifier.
        image_size: side of the square input images in pixels, or the signals' length.
        spatial_dims: 2 for images, 1 for signals (``Data.spatial_dims``).

    Raises:
        RecipeConfigError: the model name is not in :data:`MODELS`, or the model does not
            take inputs of ``spatial_dims``.
    """
    spec = {**_DEFAULTS, **{k: model_cfg[k] for k in _SPEC_KEYS if k in model_cfg}}
    spec.setdefault("name", "small_cnn")
    if spec["name"] not in MODELS:
        raise RecipeConfigError(f"model.name {spec['name']!r} is not a model; use one of {', '.join(MODELS)}")
    spec.update(in_channels=int(in_channels), num_classes=int(num_classes), image_size=int(image_size),
                spatial_dims=int(spatial_dims))
    _check_input(spec)
    return spec


def build_model(model_cfg: dict, in_channels: int, num_classes: int, image_size: int,
                spatial_dims: int = 2) -> nn.Module:
    """Build the model that ``model_cfg`` (the spec's ``model`` section) names.

    Args:
        model_cfg: the spec's ``model`` section.
        in_channels: input channels (1 or 3).
        num_classes: outputs of the classifier.
        image_size: side of the square input images in pixels, or the signals' length.
        spatial_dims: 2 for images, 1 for signals.

    Raises:
        RecipeConfigError: the model name is not in :data:`MODELS`, or the model does not
            take inputs of ``spatial_dims``.
    """
    return build_model_from_spec(model_spec(model_cfg, in_channels, num_classes, image_size, spatial_dims))


def build_model_from_spec(spec: dict) -> nn.Module:
    """Rebuild a model from :func:`model_spec`'s dict (as stored in a checkpoint).

    A spec without ``spatial_dims`` or ``kernel_size`` (written before they existed) takes
    images and the default kernel size.

    Raises:
        RecipeConfigError: the spec names no known model, or one that does not take its inputs.
    """
    builder = MODELS.get(spec.get("name"))
    if builder is None:
        raise RecipeConfigError(f"model {spec.get('name')!r} is not a model; use one of {', '.join(MODELS)}")
    spec = {"spatial_dims": 2, "kernel_size": _DEFAULTS["kernel_size"], **spec}
    _check_input(spec)
    return builder(spec)


def _check_input(spec: dict) -> None:
    dims = spec["spatial_dims"]
    takes = SPATIAL_DIMS.get(spec["name"], (2,))
    if dims not in takes:
        fit = [name for name in MODELS if dims in SPATIAL_DIMS.get(name, (2,))]
        raise RecipeConfigError(f"model.name {spec['name']} takes {' or '.join(_INPUT_KIND[d] for d in takes)} but "
                                f"the data set gives {_INPUT_KIND.get(dims, f'{dims}-D inputs')}; use "
                                f"{', '.join(fit)}, or another data set")


# --- mlp and small_cnn ---------------------------------------------------------------------

def _mlp(spec: dict) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    features = spec["in_channels"] * spec["image_size"] ** spec["spatial_dims"]
    for _ in range(spec["depth"]):
        layers += [nn.Linear(features, spec["width"]), nn.ReLU(inplace=True)]
        features = spec["width"]
    layers += [nn.Dropout(spec["dropout"]), nn.Linear(features, spec["num_classes"])]
    return nn.Sequential(*layers)


def _small_cnn(spec: dict) -> nn.Module:
    layers: list[nn.Module] = []
    channels, size = spec["in_channels"], spec["image_size"]
    for i in range(spec["depth"]):
        out = spec["width"] * 2 ** i
        layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        # Pool while there is something to pool, so the same depth works on 8x8 and 32x32.
        if size >= 2:
            layers.append(nn.MaxPool2d(2))
            size //= 2
        channels = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(spec["dropout"]),
               nn.Linear(channels, spec["num_classes"])]
    return nn.Sequential(*layers)


def _cnn1d(spec: dict) -> nn.Module:
    """``depth`` blocks of conv (``width`` channels, ``kernel_size``, same padding), batch
    norm, ReLU and a 2x max-pool while the signal is at least 2 long; then global average
    pooling, dropout and the classifier. The width stays constant: on 40-point signals the
    doubling of small_cnn would only add compute (and 8 blocks would reach 4,096 channels)."""
    layers: list[nn.Module] = []
    channels, length, width = spec["in_channels"], spec["image_size"], spec["width"]
    for _ in range(spec["depth"]):
        layers += [nn.Conv1d(channels, width, spec["kernel_size"], padding="same", bias=False),
                   nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
        if length >= 2:
            layers.append(nn.MaxPool1d(2))
            length //= 2
        channels = width
    layers += [nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Dropout(spec["dropout"]),
               nn.Linear(channels, spec["num_classes"])]
    return nn.Sequential(*layers)


def _stem_conv(in_channels: int, out_channels: int, kernel_size, stride, padding) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
    # torchvision initialises its convs this way; the replaced stem should match the rest.
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


# --- torchvision ResNets -------------------------------------------------------------------

class _ResidualBlock(nn.Module):
    """A torchvision BasicBlock or Bottleneck with one ReLU per use and optional SE."""

    def __init__(self, block: nn.Module, squeeze_excitation: bool):
        super().__init__()
        from torchvision.ops import SqueezeExcitation

        convs = [name for name in ("conv1", "conv2", "conv3") if hasattr(block, name)]
        for i, name in enumerate(convs, start=1):
            setattr(self, f"conv{i}", getattr(block, name))
            setattr(self, f"bn{i}", getattr(block, f"bn{i}"))
            setattr(self, f"relu{i}", nn.ReLU(inplace=True))
        self.n = len(convs)
        channels = getattr(block, f"bn{self.n}").num_features
        self.se = SqueezeExcitation(channels, max(1, channels // 16)) if squeeze_excitation else nn.Identity()
        self.downsample = block.downsample if block.downsample is not None else nn.Identity()
        self.relu_out = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for i in range(1, self.n + 1):
            out = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(out))
            if i < self.n:
                out = getattr(self, f"relu{i}")(out)
        out = self.se(out)
        return self.relu_out(out + self.downsample(x))


def _resnet(factory_name: str) -> Callable[[dict], nn.Module]:
    def build(spec: dict) -> nn.Module:
        import torchvision.models as tvm

        model = getattr(tvm, factory_name)(weights=None)
        if spec["cifar_stem"]:
            model.conv1 = _stem_conv(spec["in_channels"], 64, 3, stride=1, padding=1)
            model.maxpool = nn.Identity()
        elif spec["in_channels"] != 3:
            model.conv1 = _stem_conv(spec["in_channels"], 64, 7, stride=2, padding=3)
        for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
            for i in range(len(stage)):
                stage[i] = _ResidualBlock(stage[i], spec["squeeze_excitation"])
        model.fc = nn.Sequential(nn.Dropout(spec["dropout"]), nn.Linear(model.fc.in_features, spec["num_classes"]))
        return model

    return build


# --- torchvision MobileNetV3 / EfficientNet --------------------------------------------------

def _stem_adapted(factory_name: str) -> Callable[[dict], nn.Module]:
    def build(spec: dict) -> nn.Module:
        import torchvision.models as tvm

        model = getattr(tvm, factory_name)(weights=None, num_classes=spec["num_classes"], dropout=spec["dropout"])
        old = model.features[0][0]
        model.features[0][0] = _stem_conv(spec["in_channels"], old.out_channels, old.kernel_size,
                                          stride=1 if spec["cifar_stem"] else old.stride, padding=old.padding)
        return model

    return build


MODELS: dict[str, Callable[[dict], nn.Module]] = {
    "mlp": _mlp,
    "small_cnn": _small_cnn,
    "cnn1d": _cnn1d,
    "resnet18": _resnet("resnet18"),
    "resnet34": _resnet("resnet34"),
    "resnet50": _resnet("resnet50"),
    "mobilenet_v3_small": _stem_adapted("mobilenet_v3_small"),
    "mobilenet_v3_large": _stem_adapted("mobilenet_v3_large"),
    "efficientnet_b0": _stem_adapted("efficientnet_b0"),
}
#: Input dimensionality each model takes (1: signals, 2: images); models not listed take images.
SPATIAL_DIMS: dict[str, tuple[int, ...]] = {"mlp": (1, 2), "cnn1d": (1,)}
