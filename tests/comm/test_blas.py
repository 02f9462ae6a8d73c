"""distnet.blas.subtract_product: C - A B^T in one BLAS gemm, the same as NumPy's product and subtraction."""

import numpy as np
import pytest

from distnet import blas


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_subtract_product_is_numpys_and_finds_the_blas(dtype):
    rng = np.random.default_rng(2)
    c, a, b = (rng.standard_normal(s).astype(dtype) for s in ((70, 50), (70, 4), (50, 4)))
    want = c - a @ b.T
    fast, slow = blas.subtract_product(c.copy(), a, b), blas.subtract_product(c.copy(), a, b, use_blas=False)
    np.testing.assert_allclose(fast, want, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)
    np.testing.assert_array_equal(slow, want)
    assert fast.dtype == dtype
    # NumPy's wheels carry an OpenBLAS with CBLAS symbols: PowerSGD's residual must not fall back silently
    assert blas._gemm[np.dtype(dtype)] is not None


def test_subtract_product_falls_back_for_views_and_checks_shapes():
    rng = np.random.default_rng(3)
    c, a, b = rng.standard_normal((6, 8)), rng.standard_normal((6, 3)), rng.standard_normal((16, 3))[::2]
    want = c - a @ b.T
    np.testing.assert_allclose(blas.subtract_product(c, a, b), want)  # B is a strided view: NumPy's way
    with pytest.raises(ValueError, match="need C"):
        blas.subtract_product(np.zeros((6, 7)), a, b)
    with pytest.raises(ValueError, match="need C"):
        blas.subtract_product(np.zeros((6, 8), np.float32), a, b)
