"""Models by name or import path, and a plain-dict spec to rebuild any of them.

The names live in :data:`raytune_opt.registry.MODELS`; each entry's target is one of the
builders below (or a user's class or factory, given as ``"module:callable"``). A model
callable is called with keyword arguments only: a built-in gets the ``model`` section keys
its entry lists (``width``, ``dropout``...), an import-path model gets ``model.args``, and
either also gets whichever of ``num_classes``, ``input_shape`` and ``in_channels`` its
signature names (from the data). It returns an ``nn.Module`` mapping a batch to
``(batch, num_classes)`` logits.

Every built-in model is randomly initialised (torchvision builders get ``weights=None``, so
nothing is ever downloaded). Each activation is its own module, used once: torchvision's
ResNet blocks call one ``self.relu`` several times, which pt2e quantization cannot
annotate, so the residual blocks are rebuilt here with one ReLU per use.

Most models take images (N, C, H, W); ``cnn1d`` takes 1-D signals (N, C, L) and ``mlp``
takes either (:data:`SPATIAL_DIMS`).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

from raytune_opt import registry
from raytune_opt.recipe.errors import RecipeConfigError
from raytune_opt.spec.view import view

__all__ = ["MODELS", "SPATIAL_DIMS", "build_model", "model_spec", "build_model_from_spec", "call_model",
           "in_channels_of", "output_problem"]

_SPEC_KEYS = ("name", "width", "depth", "kernel_size", "dropout", "cifar_stem", "squeeze_excitation")
_DEFAULTS = {"width": 32, "depth": 2, "kernel_size": 5, "dropout": 0.0, "cifar_stem": True,
             "squeeze_excitation": False}
_INPUT_KIND = {0: "feature vectors (N, F)", 1: "1-D signals (N, C, L)", 2: "images (N, C, H, W)"}


def _builtin(name) -> registry.Entry | None:
    """The registry entry of a built-in model (one that reads ``model`` section keys)."""
    entry = registry.MODELS.get(name) if isinstance(name, str) else None
    return entry if entry is not None and "keys" in entry.meta else None


def model_spec(model_cfg: dict, input_shape: Sequence[int], num_classes: int) -> dict:
    """The plain-dict description of a model, stored in checkpoints to rebuild it.

    A built-in model's spec holds its ``model`` section keys; an import-path model's (or a
    registered user model's) holds its ``target`` import path and its ``args``, so that
    :func:`build_model_from_spec` rebuilds it without the registry or the sweep's spec.
    Either holds the data's ``input_shape`` and ``num_classes``.

    Args:
        model_cfg: the spec's ``model`` section; missing keys take the schema's defaults.
        input_shape: one sample's input shape: (C, H, W) images, (C, L) signals, (F,) features...
        num_classes: outputs of the classifier.

    Raises:
        RecipeConfigError: the model name is neither registered nor an import path, or a
            built-in model does not take such inputs.
    """
    name = view(("model",), model_cfg).name
    shape = [int(n) for n in input_shape]
    data = {"input_shape": shape, "num_classes": int(num_classes), "in_channels": in_channels_of(shape),
            "image_size": shape[-1], "spatial_dims": len(shape) - 1}
    if _builtin(name) is None:
        if name not in registry.MODELS and not registry.is_import_path(name):
            raise RecipeConfigError(f"model.name {name!r} is not a model; use one of "
                                    f"{', '.join(registry.MODELS)}, or a 'module:callable' import path")
        return {"name": name, "target": registry.MODELS.target_of(name), "args": dict(model_cfg.get("args") or {}),
                **data}
    spec = {**_DEFAULTS, **{k: model_cfg[k] for k in _SPEC_KEYS if k in model_cfg}}
    spec.update(data)
    _check_input(spec)
    return spec


def build_model(model_cfg: dict, in_channels: int, num_classes: int, image_size: int,
                spatial_dims: int = 2) -> nn.Module:
    """Build the model that ``model_cfg`` (the spec's ``model`` section) names, for square
    images (``spatial_dims`` 2) or signals (1) of ``in_channels`` channels.

    Raises:
        RecipeConfigError: as :func:`model_spec` and :func:`build_model_from_spec`.
    """
    shape = (in_channels,) + (image_size,) * spatial_dims
    return build_model_from_spec(model_spec(model_cfg, shape, num_classes))


def build_model_from_spec(spec: dict, dirs: Sequence[str] = ()) -> nn.Module:
    """Rebuild a model from :func:`model_spec`'s dict (as stored in a checkpoint).

    A spec without ``input_shape`` (written before it existed) has square images, or signals
    where it says ``spatial_dims: 1``; one without ``kernel_size`` takes the default. A spec
    with ``resized`` (a structurally pruned model, :mod:`raytune_opt.recipe.resize`) has
    those layers resized after the model is built.

    Args:
        spec: the dict.
        dirs: directories to import a ``target`` from before the current directory and ``sys.path``.

    Raises:
        RecipeConfigError: the spec names no known model, a built-in one that does not take
            its inputs, or a target that cannot be imported or does not return an ``nn.Module``.
    """
    spec = dict(spec)
    hf = spec.pop("hf", None)
    if hf is not None:  # train.loop: hf_trainer: a Hugging Face model, with its LoRA adapter
        from raytune_opt.integrations.hf import wrap

        return wrap(build_model_from_spec(spec, dirs), hf)
    resized = spec.pop("resized", None)
    if resized:
        from raytune_opt.recipe.resize import apply

        return apply(build_model_from_spec(spec, dirs), resized)
    if "input_shape" not in spec:
        spec["input_shape"] = [spec["in_channels"]] + [spec["image_size"]] * spec.get("spatial_dims", 2)
    shape = tuple(spec["input_shape"])
    spec["spatial_dims"] = len(shape) - 1
    data = {"num_classes": spec["num_classes"], "in_channels": in_channels_of(shape), "input_shape": shape}
    if "target" in spec:
        try:
            target = registry.import_target(spec["target"], dirs)
        except registry.ImportTargetError as exc:
            raise RecipeConfigError(f"model: {exc}; run where the module imports (its directory, or one on "
                                    f"PYTHONPATH)") from None
        return call_model(target, dict(spec.get("args") or {}), data, spec["target"])
    entry = _builtin(spec.get("name"))
    if entry is None:
        raise RecipeConfigError(f"model {spec.get('name')!r} is not a model; use one of {', '.join(registry.MODELS)}")
    spec = {"kernel_size": _DEFAULTS["kernel_size"], **spec}
    _check_input(spec)
    return call_model(entry.load(), {k: spec[k] for k in entry.meta["keys"]}, data, entry.name)


def call_model(target: Callable, args: dict, data: dict, label: str) -> nn.Module:
    """Call a model callable with ``args`` plus the ``data`` values (num_classes,
    input_shape, in_channels) its signature names.

    Raises:
        RecipeConfigError: an arg names an injected value, or the result is not an ``nn.Module``.
    """
    clash = sorted(set(args) & set(registry.INJECTED))
    if clash:
        raise RecipeConfigError(f"model {label}: model.args.{clash[0]} is given by the data set; remove it "
                                f"from model.args")
    sig = registry.signature_of(target)
    injected = {k: v for k, v in data.items() if sig is not None and k in sig.names}
    model = target(**args, **injected)
    if not isinstance(model, nn.Module):
        raise RecipeConfigError(f"model {label} returned a {type(model).__name__}, not a torch.nn.Module; "
                                f"return the network")
    return model


def in_channels_of(input_shape: Sequence[int]) -> int | None:
    """The channels of a channels-first sample shape (two or more dims), else None (features)."""
    return int(input_shape[0]) if len(input_shape) >= 2 else None


def output_problem(out, x: torch.Tensor, num_classes: int) -> str | None:
    """What is wrong with ``out``, a model's output on the batch ``x``, or None: it must be
    ``(batch, num_classes)`` logits."""
    want = (x.shape[0], num_classes)
    if isinstance(out, torch.Tensor) and tuple(out.shape) == want:
        return None
    got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
    return (f"a batch of inputs {tuple(x.shape)} gave {got}, but {num_classes} classes need (batch, num_classes) = "
            f"{want}; return one logit per class")


def _check_input(spec: dict) -> None:
    dims = spec["spatial_dims"]
    takes = SPATIAL_DIMS.get(spec["name"], (2,))
    if dims not in takes:
        fit = [name for name in MODELS if dims in SPATIAL_DIMS.get(name, (2,))]
        raise RecipeConfigError(f"model.name {spec['name']} takes {' or '.join(_INPUT_KIND[d] for d in takes)} but "
                                f"the data set gives {_INPUT_KIND.get(dims, f'{dims}-D inputs')}; use "
                                f"{', '.join(fit)}, or another data set")


# --- mlp and small_cnn ---------------------------------------------------------------------

def mlp(*, input_shape: Sequence[int], num_classes: int, width: int = 32, depth: int = 2,
        dropout: float = 0.0) -> nn.Module:
    """``depth`` hidden layers of ``width`` units over the flattened input."""
    layers: list[nn.Module] = [nn.Flatten()]
    features = math.prod(input_shape)
    for _ in range(depth):
        layers += [nn.Linear(features, width), nn.ReLU(inplace=True)]
        features = width
    layers += [nn.Dropout(dropout), nn.Linear(features, num_classes)]
    return nn.Sequential(*layers)


def tabular_mlp(*, input_shape: Sequence[int], num_classes: int, width: int = 32, depth: int = 2,
                dropout: float = 0.0) -> nn.Module:
    """``depth`` blocks of linear, layer norm, ReLU and dropout over a row of features, then
    the head (``num_classes`` outputs; one for a regression)."""
    layers: list[nn.Module] = [nn.Flatten()]
    features = math.prod(input_shape)
    for _ in range(depth):
        layers += [nn.Linear(features, width), nn.LayerNorm(width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        features = width
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)


def small_cnn(*, input_shape: Sequence[int], num_classes: int, width: int = 32, depth: int = 2,
              dropout: float = 0.0) -> nn.Module:
    """``depth`` conv blocks (``width`` channels, doubling per block) on images."""
    layers: list[nn.Module] = []
    channels, size = input_shape[0], input_shape[-1]
    for i in range(depth):
        out = width * 2 ** i
        layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        # Pool while there is something to pool, so the same depth works on 8x8 and 32x32.
        if size >= 2:
            layers.append(nn.MaxPool2d(2))
            size //= 2
        channels = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, num_classes)]
    return nn.Sequential(*layers)


def cnn1d(*, input_shape: Sequence[int], num_classes: int, width: int = 32, depth: int = 2, dropout: float = 0.0,
          kernel_size: int = 5) -> nn.Module:
    """``depth`` blocks of conv (``width`` channels, ``kernel_size``, same padding), batch
    norm, ReLU and a 2x max-pool while the signal is at least 2 long; then global average
    pooling, dropout and the classifier. The width stays constant: on 40-point signals the
    doubling of small_cnn would only add compute (and 8 blocks would reach 4,096 channels)."""
    layers: list[nn.Module] = []
    channels, length = input_shape[0], input_shape[-1]
    for _ in range(depth):
        layers += [nn.Conv1d(channels, width, kernel_size, padding="same", bias=False),
                   nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
        if length >= 2:
            layers.append(nn.MaxPool1d(2))
            length //= 2
        channels = width
    layers += [nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, num_classes)]
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


def _resnet(factory_name: str) -> Callable[..., nn.Module]:
    def build(*, in_channels: int, num_classes: int, dropout: float = 0.0, cifar_stem: bool = True,
              squeeze_excitation: bool = False) -> nn.Module:
        import torchvision.models as tvm

        model = getattr(tvm, factory_name)(weights=None)
        if cifar_stem:
            model.conv1 = _stem_conv(in_channels, 64, 3, stride=1, padding=1)
            model.maxpool = nn.Identity()
        elif in_channels != 3:
            model.conv1 = _stem_conv(in_channels, 64, 7, stride=2, padding=3)
        for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
            for i in range(len(stage)):
                stage[i] = _ResidualBlock(stage[i], squeeze_excitation)
        model.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(model.fc.in_features, num_classes))
        return model

    build.__name__ = build.__qualname__ = factory_name
    build.__doc__ = f"torchvision's {factory_name}, one ReLU per use, optional squeeze-and-excitation."
    return build


# --- torchvision MobileNetV3 / EfficientNet --------------------------------------------------

def _stem_adapted(factory_name: str) -> Callable[..., nn.Module]:
    def build(*, in_channels: int, num_classes: int, dropout: float = 0.0, cifar_stem: bool = True) -> nn.Module:
        import torchvision.models as tvm

        model = getattr(tvm, factory_name)(weights=None, num_classes=num_classes, dropout=dropout)
        old = model.features[0][0]
        model.features[0][0] = _stem_conv(in_channels, old.out_channels, old.kernel_size,
                                          stride=1 if cifar_stem else old.stride, padding=old.padding)
        return model

    build.__name__ = build.__qualname__ = factory_name
    build.__doc__ = f"torchvision's {factory_name} with its stem adapted to the input channels."
    return build


# The registry's targets for the built-ins ("raytune_opt.recipe.models:resnet18"...).
resnet18, resnet34, resnet50 = _resnet("resnet18"), _resnet("resnet34"), _resnet("resnet50")
mobilenet_v3_small = _stem_adapted("mobilenet_v3_small")
mobilenet_v3_large = _stem_adapted("mobilenet_v3_large")
efficientnet_b0 = _stem_adapted("efficientnet_b0")

#: The built-in models' names (the registry, :data:`raytune_opt.registry.MODELS`, owns them).
MODELS: tuple[str, ...] = tuple(n for n in registry.MODELS if "keys" in registry.MODELS[n].meta)
#: Input dimensionality each model takes (1: signals, 2: images), from the registry.
SPATIAL_DIMS: dict[str, tuple[int, ...]] = {n: registry.MODELS[n].meta["inputs"] for n in MODELS}
