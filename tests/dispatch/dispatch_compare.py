"""Comparison with a tolerance that fits the dtype, shared by the dispatch tests (imported by name:
pytest puts this folder on sys.path for the test files in it)."""

from __future__ import annotations

import torch

# fp32: backends differ only in summation order. bf16: one rounding of h, act(h) and out each (8 bits).
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}


def assert_close_scaled(actual: torch.Tensor | None, expected: torch.Tensor | None, dtype: torch.dtype,
                        what: str = "") -> None:
    """Elementwise |a - e| <= tol * (|e| + max|e|): absolute error measured against the tensor's scale,
    so sums that cancel to ~0 do not demand impossible relative accuracy in bf16."""
    if expected is None or actual is None:
        assert actual is None and expected is None, f"{what}: one gradient is None, the other is not"
        return
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.detach().double(), expected.detach().double()
    tol = TOLERANCE[dtype]
    scale = e.abs().max().item() if e.numel() else 0.0
    err = (a - e).abs() - tol * (e.abs() + max(scale, 1e-6))
    assert err.numel() == 0 or err.max().item() <= 0, (
        f"{what}: max abs error {(a - e).abs().max().item():.3g} exceeds tol {tol} (scale {scale:.3g})")
