"""Deployment measures: parameters, MACs (PyTorch's FLOP counter / 2), bytes, latency."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raytune_opt.recipe import footprint


def test_params_macs_and_bytes_of_a_linear_and_a_conv_net_by_hand():
    lin = nn.Linear(10, 5)
    assert footprint.count_params(lin) == 55
    assert footprint.count_macs(lin, torch.randn(1, 10)) == 50  # 10 x 5 multiply-accumulates, bias not counted
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                        nn.Linear(8 * 4 * 4, 2))
    convs = 8 * 4 * 4 * (3 * 3 * 3)  # output positions x kernel volume
    assert footprint.count_macs(net, torch.randn(1, 3, 4, 4)) == convs + 128 * 2
    params = 3 * 8 * 9 + 2 * 8 + 128 * 2 + 2
    assert footprint.count_params(net) == params
    # Weights and the batch norm's buffers (running mean and variance, fp32; the int64 counter).
    assert footprint.model_bytes(net) == params * 4 + 2 * 8 * 4 + 8


def test_shared_weights_count_once_and_the_mode_is_restored():
    lin = nn.Linear(4, 4)
    tied = nn.Sequential(lin, nn.ReLU(), lin).train()
    assert footprint.count_params(tied) == 20 and footprint.model_bytes(tied) == 80
    m = footprint.measures(tied, torch.randn(3, 4), latency_batch=2)
    assert tied.training and m["macs"] == 32 and m["latency_ms"] > 0
    assert set(m) == set(footprint.MEASURES)


def test_latency_grows_with_the_batch():
    net = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 256))
    x = torch.randn(1, 256)
    one = footprint.forward_latency_ms(net, x, batch=1)
    many = footprint.forward_latency_ms(net, x, batch=256)
    assert many > one > 0
