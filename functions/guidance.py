"""Classifier guidance as an eps_model wrapper (Dhariwal & Nichol, guided-diffusion's cond_fn).

`GuidedEps(eps_model, classifier, betas, scale, labels)` has the signature of the model it
wraps, `(x, t_vec) -> eps`, and returns

    eps - sqrt(1 - abar_t) * s * grad_x log p(c | x, t),

the eps of p(x_t) p(c | x_t)^s. So it composes with every step rule (DDNM, DDNM+, DDRM,
the simplified rule), with time travel, and with EquS: the EquS wrappers call it on
T(x_t), so the classifier sees the same transformed image as the UNet, and the gradient
(computed in that frame) goes back through T^-1 together with the eps.

The gradient is computed inside `torch.enable_grad()` (and outside inference mode) for this
call only, on a detached leaf copy of x, with the classifier's weights left out of the graph; nothing returned
requires grad and no graph outlives the call, so memory does not grow with the steps
(the sampling loop itself runs under no_grad).

Modes:
- "correct" (guided-diffusion, and the hq_demo copy in EquS): the gradient at the current
  x_t, for each image's own label.
- "reference": the official DDNM/EquS runner's defect, for reproducing its numbers: the
  class is 951 for every image, and the gradient is evaluated at the loop's initial x_T at
  every step. Pass that x_T as `x_T` (recommended: exact also where the first denoiser
  call does not see x_T itself, e.g. DDRM's init or an EquS schedule whose first step is
  transformed); without it the first x the wrapper is called with is captured. Build
  one wrapper per batch. The conditional UNet gets class 951 too in the reference:
  bind it with `guidance_labels(mode, labels, B)`.

Labels: a LongTensor with one class per batch image. Callers that stack k copies of the
batch (EquS "average", tiling) must stack them copy-major (copy j of image b at row
j * B + b), as both do; under tiling with B > 1 this needs the tiler's batch_size to be a
multiple of B. Order of wrappers: EquS(TiledEps(GuidedEps(EpsModel))), i.e. guidance
below tiling, because the classifier (attention pool) only takes its own image size.
"""
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F

from functions.diffusion import NoiseLevels

GUIDANCE_MODES = ("correct", "reference")
REFERENCE_CLASS = 951   # the official runner's hard-coded class_num

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def guidance_labels(mode: str, labels: Optional[torch.Tensor], batch_size: int,
                    device=None) -> torch.Tensor:
    """The classes a guided run conditions on (the classifier's and a conditional UNet's):
    the images' own `labels` in "correct" mode, class 951 for every image in "reference"."""
    if mode not in GUIDANCE_MODES:
        raise ValueError(f"guidance mode {mode!r} is unknown; choose one of: {', '.join(GUIDANCE_MODES)}")
    if mode == "reference":
        return torch.full((batch_size,), REFERENCE_CLASS, dtype=torch.long, device=device)
    if labels is None:
        raise ValueError("classifier guidance needs class labels: give each image's class (ImageNet list file) "
                         "or --class N")
    labels = torch.as_tensor(labels, device=device)
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8) or labels.shape != (batch_size,):
        raise ValueError(f"guidance labels must be an integer tensor of shape ({batch_size},), got "
                         f"{tuple(labels.shape)} {labels.dtype}; pass one class index per image")
    return labels.long()


def _input_dtype(module, fallback: torch.dtype) -> torch.dtype:
    """The dtype the classifier expects its input in: that of its first floating parameter."""
    params = getattr(module, "parameters", None)
    if params is not None:
        for p in params():
            if p.is_floating_point():
                return p.dtype
    return fallback


class GuidedEps:
    """eps_model with classifier guidance; see the module docstring.

    classifier(x, t_vec) -> (B, classes) logits (guided-diffusion's EncoderUNetModel);
    betas: the diffusion's betas (abar_t is looked up for the t of each call);
    scale: s, the classifier scale (the reference's `classifier_scale`);
    x_T: "reference" mode only, the loop's initial image (else the first x seen).
    `calls` counts classifier evaluations (forward + backward each).
    """

    def __init__(self, eps_model: EpsModel, classifier: Callable, betas: torch.Tensor, scale: float,
                 labels: Optional[torch.Tensor] = None, mode: str = "correct",
                 x_T: Optional[torch.Tensor] = None):
        if mode not in GUIDANCE_MODES:
            raise ValueError(f"guidance mode {mode!r} is unknown; choose one of: {', '.join(GUIDANCE_MODES)}")
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not scale >= 0:
            raise ValueError(f"classifier scale must be a number >= 0, got {scale!r}")
        if x_T is not None and mode != "reference":
            raise ValueError("x_T is used only by mode='reference' (the gradient at the initial image); drop it")
        if labels is None and mode == "correct":
            raise ValueError("classifier guidance needs class labels: give each image's class (ImageNet list file) "
                             "or --class N")
        self.eps_model, self.classifier = eps_model, classifier
        self.scale, self.mode = float(scale), mode
        self.labels = None if labels is None else torch.as_tensor(labels).long()
        self.x_T = None if x_T is None else x_T.detach().clone()
        self.betas = betas
        self._abar: Dict[torch.device, torch.Tensor] = {}
        self.calls = 0

    def _sqrt_one_minus_abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        table = self._abar.get(like.device)
        if table is None:
            table = self._abar[like.device] = NoiseLevels(self.betas, device=like.device).table
        return (1 - table[t.long() + 1]).sqrt().to(like.dtype).view(-1, 1, 1, 1)

    def _labels_for(self, n: int, device) -> torch.Tensor:
        if self.mode == "reference":
            return torch.full((n,), REFERENCE_CLASS, dtype=torch.long, device=device)
        B = self.labels.shape[0]
        if n % B:
            raise ValueError(f"{B} labels for a call on {n} images; stack copies of the batch copy-major "
                             f"(under tiling: a window batch_size that is a multiple of {B})")
        return self.labels.to(device).repeat(n // B)

    def _point(self, x: torch.Tensor) -> torch.Tensor:
        """Where the gradient is evaluated: x itself, or x_T in reference mode."""
        if self.mode == "correct":
            return x
        if self.x_T is None:
            self.x_T = x.detach().clone()
        ref = self.x_T.to(x.device)
        if ref.shape[1:] != x.shape[1:] or x.shape[0] % ref.shape[0]:
            raise ValueError(f"reference-mode x_T has shape {tuple(ref.shape)} but the wrapper is called on "
                             f"{tuple(x.shape)}; pass the initial image of this batch as x_T")
        return ref.repeat(x.shape[0] // ref.shape[0], 1, 1, 1)

    def grad_log_prob(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """s * grad_x sum_i log softmax(classifier(x, t))[i, c_i] (guided-diffusion's cond_fn)."""
        labels = self._labels_for(x.shape[0], x.device)
        # inference_mode(False): also works when the caller samples under torch.inference_mode
        # (its tensors are copied into ordinary ones, which autograd accepts)
        with torch.inference_mode(False), torch.enable_grad():
            x_in = x.detach().to(_input_dtype(self.classifier, x.dtype), copy=True).requires_grad_(True)
            logits = self.classifier(x_in, t.clone())
            labels = labels.clone()
            log_probs = F.log_softmax(logits.float(), dim=-1)
            selected = log_probs.gather(1, labels[:, None]).sum()
            (grad,) = torch.autograd.grad(selected, x_in)
        self.calls += 1
        return grad.to(x.dtype).mul_(self.scale)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        eps = self.eps_model(x, t)
        if eps.shape[1] == 2 * x.shape[1]:      # learned-variance channels
            eps = eps[:, : x.shape[1]]
        if self.scale == 0:
            return eps
        grad = self.grad_log_prob(self._point(x), t)
        return eps - self._sqrt_one_minus_abar(t, eps) * grad.to(eps.dtype)
