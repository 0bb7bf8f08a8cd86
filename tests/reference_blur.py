"""The reference machine's deblur_gauss operator, for replaying its goldens.

The reference blur depends on LAPACK's basis inside one near-degenerate singular
pair of the 1-D Gaussian matrix (25, 26: 0.2146205 / 0.2146194), which float32
fixes only to rounding, so each machine's LAPACK gives a slightly different
operator (see tests/test_operators.py). This helper recovers the reference
machine's choice, one rotation angle inside that pair, by fitting the fixture's
A^+ A x, and builds the operator with those factors.
"""
import math
from functools import lru_cache

import torch
from scipy.optimize import minimize_scalar

from functions.operators.base import reference_svd
from functions.operators.deblur import SeparableBlur, conv_matrix
from functions.operators import blur_kernels
from tests.shared import fixture

PAIR = slice(25, 27)


def rotated_blur(theta: float, size: int = 64) -> SeparableBlur:
    k = blur_kernels("deblur_gauss")[0]
    U, S, V = reference_svd(conv_matrix(k, size))
    c, s = math.cos(theta), math.sin(theta)
    R = torch.tensor([[c, -s], [s, c]], dtype=U.dtype)
    U2, V2 = U.clone(), V.clone()
    U2[:, PAIR] = U2[:, PAIR] @ R
    V2[:, PAIR] = V2[:, PAIR] @ R
    return SeparableBlur("deblur_gauss", k, k, size, 3, reference_lambda=True, svd_factors=((U2, S, V2),) * 2)


@lru_cache(maxsize=1)
def reference_machine_angle() -> float:
    f = fixture("operators_64.pt")
    target = f["ops"]["deblur_gauss"]["pinv_A_x"].double()

    def err(theta):
        op = rotated_blur(theta)
        return float((op.A_pinv(op.A(f["x"])).double() - target).pow(2).sum())

    coarse = min((i / 200 for i in range(-20, 21)), key=err)
    return float(minimize_scalar(err, bounds=(coarse - 0.005, coarse + 0.005), method="bounded",
                                 options={"xatol": 1e-7}).x)
