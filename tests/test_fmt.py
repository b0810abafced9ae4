"""Signed numbers in the promotion table, the manifest's notes and the gate's reasons."""

import pytest

from raytune_opt._fmt import signed


@pytest.mark.parametrize("x, spec, want", [
    (-1e-9, "+.2%", "+0.00%"),   # a change that rounds to zero, a hair below it (the CI flake of issue 25)
    (-0.0, "+.2f", "+0.00"),
    (1e-9, "+.2f", "+0.00"),
    (-0.006, "+.2f", "-0.01"),
    (-0.25, "+.2%", "-25.00%"),
    (0.28, "+.2f", "+0.28"),
])
def test_signed_never_prints_a_negative_zero(x, spec, want):
    assert signed(x, spec) == want
