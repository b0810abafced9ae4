"""User models the bad-spec corpus names by import path (imported from the spec's directory)."""

from torch import nn

SIZE = 3  # not callable


class Net(nn.Module):
    """Takes its hidden width from model.args and the class count from the data."""

    def __init__(self, hidden: int, num_classes: int, input_shape: tuple, blocks: int = 1):
        super().__init__()
        width = 1
        for dim in input_shape:
            width *= dim
        layers: list[nn.Module] = [nn.Flatten()]
        for _ in range(blocks):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.body = nn.Sequential(*layers, nn.Linear(width, num_classes))

    def forward(self, x):
        return self.body(x)


def any_args(**kwargs):
    """A **kwargs factory: every arg binds."""
    return Net(kwargs.get("hidden", 8), kwargs["num_classes"], kwargs["input_shape"])


def loop_without_ctx(config):
    """A training loop that forgot its context (train.loop must take (config, ctx))."""
