"""One SVD base class for every degradation: A = U diag(s) V^T.

A subclass supplies the decomposition -- `Vt`, `V`, `Ut`, `U` and the singular
values -- and this class derives everything else once: A, A^T, A^+ and DDNM+'s
noise-aware scalings Lambda (DDNM Eq. 17) and Lambda_noise (the noise term of
DDNM Eq. 51). Subclasses may override A / At / A_pinv / null_space (x - A^+ A x,
DDNM's projection) with direct forms (pooling, masks, separable matrices) when the
result is the same operator.

Conventions (those of DDRM's `H_funcs`, which DDRM and DDNM call):
- images are (B, C, H, W); spectral vectors are (B, N) with N = C*H*W, ordered so
  that the first m coordinates carry the singular values `singulars()` (m,);
- measurements y are (B, m) in the reference's layout, y = U(s * Vt(x)[:, :m]);
- every method also accepts flat (B, C*H*W) images, as the reference passes them.

lambda_mode:
- "svd": Lambda and Lambda_noise from this operator's own SVD (formulas below);
- "reference": where the reference has DDNM+ formulas for the operator
  (`has_reference_lambda`: all but sr_bicubic, deblur_aniso, cs_blockbased),
  reproduce them, defects included, through two hooks: `_reference_noise_coords`
  (the reference's Lambda_noise scales its inputs without the rotation V^T --
  raw patches, channels, pixels -- wherever V is more than a permutation:
  sr_averagepooling, colorization, cs_walshhadamard, deblur_uni/gauss) and
  `_reference_lambda_singulars` (deblur_uni/gauss: other singular values than
  A^+ uses, see deblur.py, the one case where this breaks DDNM+); elsewhere the
  SVD formulas. The per-coordinate formulas below are the same in both modes
  (but for denoising's noise term at sigma_y = 0, see denoising.py).

The formulas, per spectral coordinate i with singular value s_i (0 beyond m),
when a != 0 and sigma_y != 0 (otherwise Lambda = I and the noise is DDIM's):
    Lambda:  lambda_i = s_i sigma_t sqrt(1 - eta^2) / (a sigma_y)  if sigma_t < a sigma_y / s_i, else 1
    noise:   sigma_t > a sigma_y / s_i: d1 = sqrt(sigma_t^2 - (a sigma_y / s_i)^2), d2 = 0
             sigma_t < a sigma_y / s_i: d1 = sigma_t eta,                         d2 = 0
             s_i = 0 (or equality):     d1 = sigma_t eta, d2 = sigma_t sqrt(1 - eta^2)
    Lambda_noise(z, eps) = V(d1 * Vt(z) + d2 * Vt(eps))
"""
import functools
from contextlib import contextmanager
from typing import Dict, Tuple, Union

import torch

LAMBDA_MODES = ("reference", "svd")

Scalar = Union[float, torch.Tensor]


@contextmanager
def single_thread():
    """Run small dense factorizations on one thread: on a shared few-core CPU the
    OpenMP start-up and contention of a 256 x 256 SVD cost more than its arithmetic
    (13 ms on one thread, up to seconds on two busy ones), and the result then does
    not depend on the thread count."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def reference_svd(M: torch.Tensor, dtype=torch.float32):
    """SVD as the reference computes it (torch.svd, float32, CPU): U, S, V (not V^T).

    The reference's factors fix which basis spans (near-)degenerate singular
    subspaces and each vector's sign, and some reference formulas depend on that
    choice; its float32 singular values decide which ones are truncated. For a
    float64 `dtype`, U and V are re-orthonormalised in float64 (QR, signs kept) so
    the operator is exact to double precision while staying within float32
    rounding of the reference's. S is returned in float64 holding float32 values.
    """
    with single_thread():
        U, S, V = torch.svd(M.detach().to("cpu", torch.float32), some=False)
        if dtype == torch.float64:
            U, V = _orthonormalise(U), _orthonormalise(V)
    return U.double(), S.double(), V.double()


def _orthonormalise(Q: torch.Tensor) -> torch.Tensor:
    q, r = torch.linalg.qr(Q.double())
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1
    return q * signs


def interleaved_index(pixels: torch.Tensor, channels: int, hw: int) -> torch.Tensor:
    """Flat gather indices of "take these pixels, channels interleaved".

    For x of shape (B, C*hw) (channel-major), x[:, idx] has entry p*C + c equal to
    x[c, pixels[p]]. One gather instead of an index and a transposing copy.
    """
    return (torch.arange(channels, device=pixels.device)[None, :] * hw + pixels[:, None]).reshape(-1)


def inverse_index(idx: torch.Tensor) -> torch.Tensor:
    """inv with inv[idx] = arange: gathering with it undoes gathering with the permutation idx."""
    inv = torch.empty_like(idx)
    inv[idx] = torch.arange(idx.numel(), device=idx.device)
    return inv


def per_image(method):
    """Run a batched operator method image by image.

    A matrix product over a batch folds the images into its row count, and the
    matrix kernels round the rows differently for different counts at some sizes
    (odd blur sizes, bicubic SR with an odd n / factor, block CS at 32): image i's
    result then moves in the last float bit with the batch it is in. One image at a
    time the shapes, and so the bits, do not depend on the batch."""
    @functools.wraps(method)
    def batched(self, v, *args, **kwargs):
        if v.shape[0] <= 1:
            return method(self, v, *args, **kwargs)
        return torch.cat([method(self, v[i:i + 1], *args, **kwargs) for i in range(v.shape[0])])
    return batched


def image_hw(image_size) -> Tuple[int, int]:
    """(H, W) from an image size given as an int (square) or an (H, W) tuple / list of positive ints."""
    if isinstance(image_size, (tuple, list, torch.Size)):
        if len(image_size) != 2:
            raise ValueError(f"image_size must be an int or (H, W), got {tuple(image_size)}")
        sides = tuple(image_size)
    else:
        sides = (image_size, image_size)
    out = []
    for side in sides:
        try:
            ok = not isinstance(side, bool) and int(side) == side and int(side) >= 1
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"image_size must be a positive integer or (H, W) of positive integers, "
                             f"got {image_size!r}")
        out.append(int(side))
    return out[0], out[1]


def _scalar(v: Scalar, like: torch.Tensor) -> torch.Tensor:
    """A 0-d tensor on `like`'s device and dtype; tensors stay on device (no host sync)."""
    if isinstance(v, torch.Tensor):
        return v.detach().reshape(-1)[0].to(device=like.device, dtype=like.dtype)
    # torch.full fills on the device: no host-to-device copy (torch.tensor would wait for a GPU)
    return torch.full((), float(v), device=like.device, dtype=like.dtype)


class SVDOperator:
    """Base class: a linear operator given by its (implicit) SVD; see the module docstring."""

    name: str = "operator"
    has_reference_lambda: bool = False
    # A^+ A = I (no null space: denoising); DDNM's projection is then A^+ y whatever x0
    full_rank: bool = False

    def __init__(self, image_size, channels: int, device="cpu", dtype=torch.float32,
                 lambda_mode: str = "reference"):
        if lambda_mode not in LAMBDA_MODES:
            raise ValueError(f"lambda_mode must be one of {LAMBDA_MODES}, got {lambda_mode!r}")
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point torch dtype, got {dtype}")
        self.height, self.width = image_hw(image_size)
        # the int side for a square operator (as before any size was allowed), else (H, W); the
        # operators themselves use height / width only
        self.image_size = self.height if self.height == self.width else (self.height, self.width)
        self.channels = int(channels)
        self.device = torch.device(device)
        self.dtype = dtype
        self.lambda_mode = lambda_mode

    # ---- sizes -------------------------------------------------------------------------------
    @property
    def N(self) -> int:
        return self.channels * self.height * self.width

    @property
    def image_shape(self):
        """(C, H, W) of the images this operator takes; what new code should use (image_size is
        the side of a square operator, (H, W) otherwise)."""
        return (self.channels, self.height, self.width)

    @property
    def num_measurements(self) -> int:
        return int(self.singulars().numel())

    # ---- decomposition (subclasses) ----------------------------------------------------------
    def Vt(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, C, H, W) -> spectral coordinates (B, N)."""
        raise NotImplementedError

    def V(self, v: torch.Tensor) -> torch.Tensor:
        """Spectral coordinates (B, N) -> image (B, C, H, W)."""
        raise NotImplementedError

    def Ut(self, y: torch.Tensor) -> torch.Tensor:
        """(B, m) -> (B, m)."""
        return self._flat(y)

    def U(self, y: torch.Tensor) -> torch.Tensor:
        """(B, m) -> (B, m)."""
        return self._flat(y)

    def singulars(self) -> torch.Tensor:
        """(m,) singular values in the order of Vt / Ut; zeros allowed."""
        raise NotImplementedError

    # ---- derived -----------------------------------------------------------------------------
    def add_zeros(self, v: torch.Tensor) -> torch.Tensor:
        """(B, m) -> (B, N), zero padded."""
        v = self._flat(v)
        pad = self.N - v.shape[1]
        if pad == 0:
            return v
        return torch.cat([v, v.new_zeros(v.shape[0], pad)], dim=1)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        s = self.singulars()
        return self.U(s * self.Vt(x)[:, : s.numel()])

    def At(self, y: torch.Tensor) -> torch.Tensor:
        return self.V(self.add_zeros(self.singulars() * self.Ut(y)))

    def A_pinv(self, y: torch.Tensor) -> torch.Tensor:
        return self.V(self.add_zeros(self._pinv_singulars() * self.Ut(y)))

    def null_space(self, x: torch.Tensor) -> torch.Tensor:
        """(I - A^+ A) x, the part of image x that A does not see; image -> image.

        DDNM's projection is x0 - A^+(A x0 - y) = null_space(x0) + A^+ y, with A^+ y
        formed once per run. Subclasses override this where the projector is
        cheaper than A followed by A^+ (a mask, half the matrix products). The
        result is always a new tensor: DDNM adds A^+ y to it in place."""
        x = self._image(x)
        return x - self.A_pinv(self.A(x))

    def _pinv_singulars(self) -> torch.Tensor:
        s = self.singulars()
        return torch.where(s > 0, 1.0 / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(s))

    def _full_singulars(self, s: torch.Tensor) -> torch.Tensor:
        """Pad singular values with zeros to N (one per spectral coordinate)."""
        return torch.cat([s, s.new_zeros(self.N - s.numel())])

    # ---- DDNM+ -------------------------------------------------------------------------------
    def _reference_active(self) -> bool:
        return self.lambda_mode == "reference" and self.has_reference_lambda

    def lambda_coefficients(self, a: Scalar, sigma_y: Scalar, sigma_t: Scalar, eta: Scalar):
        """(lambda, d1, d2), each (N,) in spectral order: Lambda = V diag(lambda) V^T and
        Lambda_noise(z, eps) = V(d1 * c(z) + d2 * c(eps)), c = V^T (or the reference's map)."""
        s = self._reference_lambda_singulars() if self._reference_active() else self._full_singulars(self.singulars())
        return (lambda_factors(s, a, sigma_y, sigma_t, eta),) + noise_factors(s, a, sigma_y, sigma_t, eta)

    def Lambda(self, v: torch.Tensor, a: Scalar, sigma_y: Scalar, sigma_t: Scalar, eta: Scalar) -> torch.Tensor:
        """V diag(lambda_t) V^T v (DDNM+ Eq. 17); image -> image."""
        lam, _, _ = self.lambda_coefficients(a, sigma_y, sigma_t, eta)
        return self.V(lam * self.Vt(v))

    def Lambda_noise(self, v: torch.Tensor, a: Scalar, sigma_y: Scalar, sigma_t: Scalar, eta: Scalar,
                     eps: torch.Tensor) -> torch.Tensor:
        """Noise of DDNM Eq. 51: V(d1 * Vt(v) + d2 * Vt(eps)); v, eps images -> image."""
        _, d1, d2 = self.lambda_coefficients(a, sigma_y, sigma_t, eta)
        coords = self._reference_noise_coords if self._reference_active() else self.Vt
        return self.V(d1 * coords(v) + d2 * coords(eps))

    def _reference_lambda_singulars(self) -> torch.Tensor:
        """(N,) singular values the reference's Lambda formulas use (its own A^+'s by default)."""
        return self._full_singulars(self.singulars())

    def _reference_noise_coords(self, x: torch.Tensor) -> torch.Tensor:
        """The coordinates the reference's Lambda_noise scales (V^T x by default)."""
        return self.Vt(x)

    # ---- state (random / injected parts) -----------------------------------------------------
    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"{self.name} has no saved state, got keys {sorted(state)}")

    def save(self, path) -> None:
        size = self.image_size if isinstance(self.image_size, int) else list(self.image_size)
        torch.save({"name": self.name, "image_size": size, "channels": self.channels,
                    "state": {k: v.cpu() for k, v in self.state_dict().items()}}, path)

    def load(self, path) -> None:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        try:
            saved_hw = image_hw(blob.get("image_size"))
        except ValueError:
            saved_hw = None
        if blob.get("name") != self.name or saved_hw != (self.height, self.width) \
                or blob.get("channels") != self.channels:
            raise ValueError(f"{path} holds a {blob.get('name')} operator of size {blob.get('image_size')} "
                             f"and {blob.get('channels')} channels; this is {self.name}, "
                             f"size {self.image_size}, {self.channels} channels")
        self.load_state_dict(blob["state"])

    # ---- helpers -----------------------------------------------------------------------------
    def _t(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(device=self.device, dtype=self.dtype)

    def _flat(self, v: torch.Tensor) -> torch.Tensor:
        return v.reshape(v.shape[0], -1).to(self.dtype)

    def _image(self, x: torch.Tensor) -> torch.Tensor:
        H, W = self.height, self.width
        if x.dim() == 4 and tuple(x.shape[1:]) == (self.channels, H, W):
            return x.to(self.dtype)
        if x.dim() == 2 and x.shape[1] == self.N:
            return x.reshape(x.shape[0], self.channels, H, W).to(self.dtype)
        raise ValueError(f"{self.name} expects images of shape (B, {self.channels}, {H}, {W}) "
                         f"or (B, {self.N}), got {tuple(x.shape)}")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, image_size={self.image_size}, "
                f"channels={self.channels}, m={self.num_measurements}, device={self.device}, "
                f"dtype={self.dtype}, lambda_mode={self.lambda_mode!r})")


def lambda_factors(s: torch.Tensor, a: Scalar, sigma_y: Scalar, sigma_t: Scalar, eta: Scalar) -> torch.Tensor:
    """Per-coordinate lambda_t of DDNM+ Eq. 17 (see the module docstring); tensor ops only."""
    a, sigma_y, sigma_t, eta = (_scalar(v, s) for v in (a, sigma_y, sigma_t, eta))
    nonzero = s > 0
    inv = torch.where(nonzero, 1.0 / torch.where(nonzero, s, torch.ones_like(s)), torch.zeros_like(s))
    a_sy = a * sigma_y
    active = (a != 0) & (sigma_y != 0)
    change = active & (sigma_t < a_sy * inv)
    safe = torch.where(a_sy != 0, a_sy, torch.ones_like(a_sy))
    return torch.where(change, s * sigma_t * (1 - eta ** 2).sqrt() / safe, torch.ones_like(s))


def noise_factors(s: torch.Tensor, a: Scalar, sigma_y: Scalar, sigma_t: Scalar, eta: Scalar):
    """(d1, d2) of the noise term of DDNM Eq. 51, per coordinate (see the module docstring)."""
    a, sigma_y, sigma_t, eta = (_scalar(v, s) for v in (a, sigma_y, sigma_t, eta))
    nonzero = s > 0
    inv = torch.where(nonzero, 1.0 / torch.where(nonzero, s, torch.ones_like(s)), torch.zeros_like(s))
    a_sy_inv = a * sigma_y * inv
    active = (a != 0) & (sigma_y != 0)
    full1 = (sigma_t * eta).expand_as(s)
    full2 = (sigma_t * (1 - eta ** 2).sqrt()).expand_as(s)
    zero = torch.zeros_like(s)
    below = active & (sigma_t < a_sy_inv)
    above = active & (sigma_t > a_sy_inv)
    d1 = torch.where(above, (sigma_t ** 2 - a_sy_inv ** 2).clamp_min(0).sqrt(), full1)
    d2 = torch.where(below | above, zero, full2)
    null = active & ~nonzero
    d1 = torch.where(null, full1, d1)
    d2 = torch.where(null, full2, d2)
    return d1, d2
