"""What the network is conditioned on in a run: class labels and classifier guidance, wrapped around the eps model.

A class-conditional UNet gets each image's class (from the dataset's list file, or
--class N for all); a config with a `classifier` section (imagenet_256_cc.yml) adds
classifier guidance (functions/guidance.GuidedEps) on top. Both sit under the EquS
and tiling wrappers, so the classifier sees the same (transformed, windowed) input as
the UNet. The runner asks for the wrapped model per batch (or per photo).
"""
from typing import Optional

import torch

from functions.noise import PerImageNoise, seed_for


def load_classifier_for(plan):
    """The guidance classifier of the plan's config, on the plan's device (None without guidance)."""
    if not plan.guidance:
        return None
    from guided_diffusion.checkpoints import resolve_classifier_checkpoint
    from guided_diffusion.classifier import load_classifier

    path = resolve_classifier_checkpoint(plan.config, exp=plan.args.exp, override=plan.args.classifier_ckpt)
    return load_classifier(plan.config["classifier"], path, plan.device)


class Conditioning:
    """Builds eps(x, t) for a batch: labels bound to a class-conditional UNet, then guidance."""

    def __init__(self, plan, eps_model, betas: torch.Tensor):
        self.plan, self.eps_model, self.betas = plan, eps_model, betas
        self.class_cond = bool((plan.config.get("model", {}) or {}).get("class_cond", False))
        self.guidance = plan.guidance
        self.classifier = getattr(plan, "classifier", None)
        if self.guidance and self.classifier is None:
            self.classifier = load_classifier_for(plan)

    def labels(self, batch) -> Optional[torch.Tensor]:
        """One class per image: --class, else the image's own (checked while planning)."""
        if not (self.class_cond or self.guidance):
            return None
        from functions.guidance import guidance_labels

        fixed = self.plan.args.class_label
        own = torch.tensor([fixed if fixed is not None else it.label for it in batch], device=self.plan.device)
        mode = self.guidance["mode"] if self.guidance else "correct"
        return guidance_labels(mode, own, len(batch), device=self.plan.device)

    def for_batch(self, batch, x_T: Optional[torch.Tensor] = None):
        labels = self.labels(batch)
        eps = bind_labels(self.eps_model, labels) if self.class_cond else self.eps_model
        if not self.guidance:
            return eps
        from functions.guidance import GuidedEps

        reference = self.guidance["mode"] == "reference"
        if reference and x_T is None:   # the loop's initial image: restore's first draw from the same seeds
            C, H, W = self.plan.op.image_shape
            seeds = [seed_for(self.plan.args.seed, it.index) for it in batch]
            x_T = PerImageNoise(seeds, device=self.plan.device).randn_like(
                torch.empty((len(batch), C, H, W), device=self.plan.device))
        return GuidedEps(eps, self.classifier, self.betas, self.guidance["scale"], labels,
                         mode=self.guidance["mode"], x_T=x_T if reference else None)


def bind_labels(eps_model, labels: Optional[torch.Tensor]):
    """eps(x, t) of a class-conditional model with the batch's labels; callers that stack k copies of the
    batch (EquS average, tiling) stack them copy-major, so the labels are repeated k times."""
    if labels is None:
        return eps_model

    def eps(x, t):
        return eps_model(x, t, labels.repeat(x.shape[0] // labels.shape[0]))

    return eps
