"""Separable deblurring: deblur_uni, deblur_gauss, deblur_aniso (reference `Deblurring`, `Deblurring2D`).

The reference's 1-D matrix takes taps j in [i - K/2, i + K/2) with zero boundary,
so the last tap of every kernel is dropped (5 taps act as 4, 9 as 8); singular
values of the 1-D matrix below 3e-2 are zeroed; the 2-D blur is A_rows X A_cols^T
per channel, with singular values s_rows[i] s_cols[j], sorted in decreasing order
(torch's CPU sort; ties -- s_i s_j = s_j s_i -- in its order).

Reference defects, reproduced by default and documented here (see
tests/test_operators.py for the evidence):

1. The singular values are not matched to their singular vectors. Spectral
   coordinates are laid out pixel-major with channels interleaved (index p*C + c
   for sorted position p), but `singulars()` is `sorted.repeat(1, 3)`, i.e. channel-
   major: coordinate p*C + c gets the singular value sorted[(p*C + c) mod HW]
   instead of sorted[p]. The reference's A, A^T and A^+ (and so its y, DDNM and
   DDRM) use these: its "blur" is not the blur. `blur_svd="matched"` gives the true
   (truncated) blur instead. The fixtures and the published numbers use the former.
2. DDNM+ (deblur_uni / deblur_gauss only): Lambda and Lambda_noise use the
   *matched, untruncated* singular values, per pixel position, while A^+ divides by
   the mismatched, truncated ones of (1). So Lambda's noise-aware scaling is
   computed for singular values that A^+ does not use: on a coordinate where A^+
   divides by a small mismatched s' but Lambda assumes a larger s, the noise in y
   (sigma_y / s') is not damped, and on truncated coordinates (A^+ = 0 there, so
   nothing of y arrives) Lambda_noise still treats s as nonzero and drops the
   sqrt(1 - eta^2) sigma_t share of the noise (d2 = 0 everywhere, since no
   untruncated s is exactly 0), leaving those coordinates under-noised.
3. Lambda_noise scales the pixel-permuted input instead of its V^T coordinates
   (no rotation), as in every reference Lambda_noise with a rotation.
This is why the reference's DDNM+ on noisy deblur_gauss fails (fixtures README:
MSE 1.02 against DDRM's 0.26; the public report of PSNR < 10). lambda_mode="svd"
uses this operator's own singular values throughout, which removes 2 and 3.

The separable form makes A, A^T, A^+: U_r (G * (V_r^T X V_c)) U_c^T with G the
(C, H, W) grid of each coordinate's singular value, two small matrix products per
side. No (CHW)^2 matrix anywhere.
"""
import torch

from .base import SVDOperator, interleaved_index, inverse_index, reference_svd

TRUNCATE_BELOW = 3e-2
BLUR_SVD_MODES = ("reference", "matched")


def gaussian_kernel(sigma: float, radius: int) -> torch.Tensor:
    """The reference's float32 Gaussian taps exp(-x^2 / (2 sigma^2)), x = -radius..radius, normalised."""
    k = torch.Tensor([float(torch.exp(torch.Tensor([-0.5 * (x / sigma) ** 2]))) for x in range(-radius, radius + 1)])
    return k / k.sum()


def uniform_kernel(taps: int = 9) -> torch.Tensor:
    return torch.Tensor([1 / taps] * taps)


def conv_matrix(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """(size, size) matrix of the reference `Deblurring`: taps [i - K/2, i + K/2), zero boundary."""
    K = kernel.shape[0]
    i = torch.arange(size)[:, None]
    offsets = torch.arange(-(K // 2), K // 2)[None, :]
    j = i + offsets
    valid = (j >= 0) & (j < size)
    M = torch.zeros(size, size, dtype=torch.float32)
    rows = i.expand_as(j)[valid]
    M[rows, j[valid]] = kernel.float()[(offsets + K // 2).expand_as(j)[valid]]
    return M


class SeparableBlur(SVDOperator):
    """A_rows X A_cols^T per channel with the reference's truncation and singular-value order.

    svd_factors: ((U, S, V) of the rows matrix, (U, S, V) of the columns matrix), as
    `reference_svd` returns them, to inject the 1-D factors instead of computing
    them. The reference operator depends on LAPACK's choice of basis inside
    near-degenerate singular pairs (deblur_gauss at 64: 0.2146205 / 0.2146194), which
    float32 fixes only to ~eps / gap; injecting factors reproduces another machine's.
    """

    def __init__(self, name: str, kernel_rows: torch.Tensor, kernel_cols: torch.Tensor, image_size: int,
                 channels: int, device="cpu", dtype=torch.float32, lambda_mode: str = "reference",
                 blur_svd: str = "reference", reference_lambda: bool = False, svd_factors=None):
        super().__init__(image_size, channels, device, dtype, lambda_mode)
        if blur_svd not in BLUR_SVD_MODES:
            raise ValueError(f"blur_svd must be one of {BLUR_SVD_MODES}, got {blur_svd!r}")
        self.name = name
        self.blur_svd = blur_svd
        self.has_reference_lambda = reference_lambda
        n, C = image_size, channels
        self.kernel_rows = kernel_rows.detach().float().cpu()
        self.kernel_cols = kernel_cols.detach().float().cpu()
        if svd_factors is None:
            Ur, Sr, Vr = reference_svd(conv_matrix(self.kernel_rows, n), dtype)
            same = torch.equal(self.kernel_rows, self.kernel_cols)
            Uc, Sc, Vc = (Ur, Sr, Vr) if same else reference_svd(conv_matrix(self.kernel_cols, n), dtype)
        else:
            (Ur, Sr, Vr), (Uc, Sc, Vc) = svd_factors
        self._Ur, self._Vr, self._Uc, self._Vc = (self._t(M) for M in (Ur, Vr, Uc, Vc))

        # 2-D singular values in float32 as the reference forms and sorts them
        sr_orig, sc_orig = Sr.float(), Sc.float()
        sr, sc = sr_orig.clone(), sc_orig.clone()
        sr[sr < TRUNCATE_BELOW] = 0
        sc[sc < TRUNCATE_BELOW] = 0
        sorted_s, perm = (sr[:, None] * sc[None, :]).reshape(-1).sort(descending=True)
        self._perm = perm.to(self.device)
        self._idx = interleaved_index(self._perm, C, n * n)
        self._inv = inverse_index(self._idx)
        if blur_svd == "reference":
            s = sorted_s.repeat(C)                       # coordinate q gets sorted[q mod HW]
        else:
            s = sorted_s.repeat_interleave(C)            # coordinate p*C + c gets sorted[p]
        self._s = self._t(s)
        # the same singular values on the (C, H, W) grid of V_r^T X V_c (float32 holds them exactly)
        grid = torch.empty(C, n * n, dtype=torch.float32)
        grid[:, perm] = s.reshape(n * n, C).T
        self._grid = self._t(grid.reshape(C, n, n))
        self._grid_pinv = torch.where(self._grid > 0, self._grid.reciprocal(), torch.zeros_like(self._grid))
        self._null_grid = (self._grid == 0).to(self._grid.dtype)     # A^+ A = V diag(G > 0) V^T
        # what the reference's Lambda / Lambda_noise use: matched, untruncated, per pixel position
        orig = (sr_orig[:, None] * sc_orig[None, :]).reshape(-1)[perm]
        self._s_lambda_ref = self._t(orig.repeat_interleave(C))

    def singulars(self):
        return self._s

    # spectral coordinates: (B, C, H, W) grid <-> sorted, pixel-major, channels interleaved
    def _to_vec(self, T):
        return T.reshape(T.shape[0], -1).index_select(1, self._idx)

    def _to_grid(self, v):
        v = self._flat(v)
        n = self.image_size
        return v.index_select(1, self._inv).reshape(v.shape[0], self.channels, n, n)

    def Vt(self, x):
        return self._to_vec(self._Vr.T @ self._image(x) @ self._Vc)

    def V(self, v):
        return self._Vr @ self._to_grid(v) @ self._Vc.T

    def Ut(self, y):
        return self._to_vec(self._Ur.T @ self._image(y) @ self._Uc)

    def U(self, y):
        return (self._Ur @ self._to_grid(y) @ self._Uc.T).reshape(y.shape[0], -1)

    def A(self, x):
        x = self._image(x)
        return (self._Ur @ (self._grid * (self._Vr.T @ x @ self._Vc)) @ self._Uc.T).reshape(x.shape[0], -1)

    def At(self, y):
        return self._Vr @ (self._grid * (self._Ur.T @ self._image(y) @ self._Uc)) @ self._Vc.T

    def A_pinv(self, y):
        return self._Vr @ (self._grid_pinv * (self._Ur.T @ self._image(y) @ self._Uc)) @ self._Vc.T

    def null_space(self, x):
        """V ((G == 0) * V^T x): four matrix products instead of A's four and A^+'s four."""
        return self._Vr @ (self._null_grid * (self._Vr.T @ self._image(x) @ self._Vc)) @ self._Vc.T

    def _reference_lambda_singulars(self):
        return self._s_lambda_ref

    def _reference_noise_coords(self, x):
        return self._to_vec(self._image(x))
