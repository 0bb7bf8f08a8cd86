"""Phase 1 of a restoration run: flags, config, dataset and operator -> a Plan; writes nothing.

`make_plan` checks every input (runners/checks.py, runners/devices.py), reads the
dataset (runners/data.py), builds the operator and the sampler configuration, and
spells the run's settings and fingerprint (runners/settings.py), with the notes the
run prints before it starts. A bad flag, dataset, mask or output path fails here
with one line, before any earlier result could be touched or the network loaded.
"""
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import torch

from runners import data, distributed, photos
from runners.checks import _check_apart, _check_flags, _check_output_path, _config_int, _mask_source
from runners.devices import _check_speed_flags, resolve_device
from runners.errors import InputError
from runners.results import OutputFolder
from runners.settings import (FIRST_STEP_GAIN_NOTE, _ckpt_setting, _draws_transforms, _file_digest, _first_step_gain,
                              _num_timesteps, _path_y_setting, _sampler_config, _travels)

SAMPLE_FOLDER = "image_samples"


@dataclass
class Plan:
    """Everything phase 2 needs, checked: the run is decided here, before anything is written."""

    args: object
    argv: List[str]
    config: dict
    device: torch.device
    items: List[data.ImageItem]
    image_size: int
    channels: int
    preprocess: str
    op: object
    sampler_cfg: object
    out: OutputFolder
    settings: Dict
    fingerprint: str
    batch_size: int
    notes: List[str] = field(default_factory=list)
    dist: distributed.Context = field(default_factory=distributed.Context)
    # photo runs (--native_size / --resize_y, runners/photos.py): each image's restored (H, W); op is then
    # the first image's operator, built to check the run (each image gets its own)
    photo_sizes: Dict[str, tuple] = field(default_factory=dict)
    # classifier guidance (a config with a classifier section): {mode, scale}; None without
    guidance: Optional[Dict] = None
    classifier: object = None       # loaded with the network (runners/execute.load_eps_model)


def make_plan(args, argv: List[str], device_name: Optional[str] = None) -> Plan:
    """Check every input and build the operator; writes nothing, loads no network.

    device_name: the device to use instead of --device (a torchrun rank's cuda:LOCAL_RANK).
    """
    from guided_diffusion.models import load_config

    _check_flags(args)
    config = load_config(args.config)
    if args.ckpt is not None:   # a file the user names: checked now, before any folder is compared or written
        from guided_diffusion.checkpoints import resolve_checkpoint
        resolve_checkpoint(config, args.exp, override=args.ckpt)
    data_cfg = config.get("data", {}) or {}
    image_size = _config_int(args, data_cfg, "data", "image_size", 256)
    channels = _config_int(args, data_cfg, "data", "channels", 3)
    device = resolve_device(args.device if device_name is None else device_name)
    _check_speed_flags(args, device)
    sampler_cfg = _sampler_config(args, config)

    items = data.build_dataset(args.path_y, args.exp, config, args.subset_start, args.subset_end)
    # where the output goes, checked before anything about the images' names: an output folder
    # inside the dataset would read its own results back as inputs
    out = OutputFolder(Path(args.exp) / SAMPLE_FOLDER / args.image_folder)
    _check_output_path(out.root)
    data_root = data.resolve_root(args.path_y, args.exp)
    _check_apart(out.root, data_root)
    sizes = data.verify_images(items)
    reserved = OutputFolder(Path("."))
    clash = [it for it in items if Path(f"{it.name}.png") == reserved.grid]
    if clash:
        raise InputError(f"input image {clash[0].path} would be written as {reserved.grid.name}, the name of the "
                         f"comparison grid in the output folder; rename that file")
    guidance = guidance_plan(args, config)
    needs_labels = bool((config.get("model", {}) or {}).get("class_cond", False)) or bool(guidance)
    if needs_labels and args.class_label is not None:
        num_classes = int((config.get("model", {}) or {}).get("num_classes", 1000))
        if args.class_label >= num_classes:
            raise InputError(f"--class {args.class_label} is not below the model's {num_classes} classes")
    elif needs_labels and not (guidance and guidance["mode"] == "reference"):
        unlabelled = [it.name for it in items if it.label < 0]
        if unlabelled:
            raise InputError(f"this model is class-conditional or classifier-guided but {len(unlabelled)} image(s) "
                             f"have no class label (e.g. {unlabelled[0]}); give a list file with 'name label' lines "
                             f"or --class N")
        num_classes = int((config.get("model", {}) or {}).get("num_classes", 1000))
        out_of_range = [it for it in items if it.label >= num_classes]
        if out_of_range:
            raise InputError(f"class label {out_of_range[0].label} of {out_of_range[0].name} is not below the "
                             f"model's {num_classes} classes; fix the list file")

    simplified = sampler_cfg.sampler == "simplified"
    photo_sizes, photo_notes = {}, []
    if photos.photo_mode(args):
        photo_sizes, photo_notes = photos.photo_sizes(args, items, image_size)
        photos.check_tiling(args, image_size)
        photos.check_photo_mask(args, photo_sizes)
        mask = args.mask if photos.uses_mask(args.deg) else None
        op = photos.build_photo_operator(args, photo_sizes[items[0].name], channels, device, simplified, mask)
    else:
        mask = _mask_source(args, image_size)
        op = photos.build_photo_operator(args, (image_size, image_size), channels, device, simplified, mask)

    model_cfg = {k: config.get(k) for k in ("data", "model", "diffusion")}
    settings = {
        "config": Path(args.config).name,
        "config_sha": hashlib.sha256(json.dumps(model_cfg, sort_keys=True, default=str).encode()).hexdigest()[:16],
        "path_y": _path_y_setting(args, data_root), "deg": args.deg, "deg_scale": args.deg_scale, "sigma_y": args.sigma_y,
        "add_noise": bool(args.add_noise), "noise_type": args.noise_type, "seed": args.seed,
        "mask": mask, "mask_sha": _file_digest(mask) if mask and Path(mask).is_file() else None,
        "lambda_mode": args.lambda_mode, "blur_svd": args.blur_svd, "ckpt": _ckpt_setting(args, config),
        "lpips_net": args.lpips_net,
        # sigma_y stays in CLI units; travel_from only where a step travels (below)
        **{k: v for k, v in sampler_cfg.to_dict().items() if k not in ("sigma_y", "travel_from", "simplified_noise")},
    }
    # entries only where they apply, so that the runs made before they existed keep their fingerprints
    if simplified:
        settings["simplified_noise"] = sampler_cfg.simplified_noise
    if photo_sizes:
        settings.update(native_size=bool(args.native_size), resize_y=bool(args.resize_y), tiling=args.tiling,
                        tile_stride=args.tile_stride or image_size // 2)
        if args.tiling == "average":
            settings["tile_blend"] = args.tile_blend
    if guidance:
        settings["guidance"] = guidance
    if args.class_label is not None and needs_labels:
        settings["class_label"] = args.class_label
    if sampler_cfg.sampler == "ddrm" and sampler_cfg.schedule == "uniform" \
            and _num_timesteps(config) % sampler_cfg.steps:
        # DDRM's own range(0, T, T // steps) since 2026-11-27 (before: DDNM's list, another schedule
        # for these step counts); folders made before have no such entry, so they are not resumed into
        settings["ddrm_schedule"] = "range"
    if _travels(sampler_cfg, config):
        # time travel re-noises the raw x0 (the official DDNM's) since 2026-11-27, x0_hat before; folders
        # made before have no such entry, so they are not resumed into
        settings["travel_from"] = sampler_cfg.travel_from
    if args.deg == "cs_walshhadamard" or (mask or "").startswith("random:"):
        # drawn from numpy streams of their own since 2026-11-26 (before: torch's, shared with x_T)
        settings["operator_stream"] = "pcg64"
    if _draws_transforms(sampler_cfg.equs, sampler_cfg.transform):
        settings["transform_stream"] = "seedsequence"   # the per-step choices' own stream, since 2026-11-26
    if args.add_noise and args.sigma_y > 0:
        # y's noise has its own stream (functions.noise.measurement_seed); folders made when it
        # repeated x_T's draws have no such entry, so they are not resumed into
        settings["y_noise_stream"] = "measurement_seed"
    fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    batch_size = args.batch_size or _config_int(args, config.get("sampling", {}) or {}, "sampling", "batch_size", 1)
    notes = []
    if sampler_cfg.equs == "average":
        from functions.equivariance import make_denoiser
        from functions.transforms import first_missing_composition

        group = make_denoiser(lambda x, t: x, "average", sampler_cfg.transform).transforms
        missing = first_missing_composition(group, image_size)
        if missing:
            notes.append(f"note: the average over {{{', '.join(T.name for T in group)}}} is not over a group "
                         f"({missing[0]} after {missing[1]} is not in it), so the averaged denoiser is not "
                         f"equivariant; a closed set such as --transform flips, rotations or d4 is")
    if sampler_cfg.sampler == "simplified" and not (args.simplified or args.sampler == "simplified"):
        notes.append(f"note: --deg {args.deg} is a composite degradation: it runs with the simplified (SVD-free) "
                     f"rule, as with --simplified")
    notes.extend(photo_notes)
    if args.deg == "inpainting" and mask is None:
        notes.append(f"note: no --mask and no {Path(args.exp) / 'inp_masks' / 'mask.npy'} (where the reference reads "
                     f"its mask): inpainting uses the built-in default mask (functions/masks.py)")
    if not sampler_cfg.clip_x0:
        gain, first = _first_step_gain(sampler_cfg, config)
        if gain > FIRST_STEP_GAIN_NOTE:
            notes.append(f"note: the first step goes from t = {first.t} to t = {first.t_next}, which multiplies the "
                         f"error of the model's first noise prediction by {gain:.0f} on its way into x_{first.t_next} "
                         f"(the reference's schedule does the same); with a prior as weak as the demo's the result is "
                         f"unusable (4x SR, 7 EquS+ steps: 6 dB): add --clip_x0 or use more steps")
    reshaped = None if photo_sizes else data.reshaped_note(items, sizes, image_size, data.preprocess_mode(config))
    if reshaped:
        notes.append(reshaped)
    if args.sigma_y > 0 and not args.add_noise:
        notes.append(f"note: --sigma_y {args.sigma_y} without --add_noise: y stays noise-free while the sampler "
                     f"assumes noise of that level (the reference's behaviour)")
    return Plan(args, argv, config, device, items, image_size, channels, data.preprocess_mode(config), op,
                sampler_cfg, out, settings, fingerprint, batch_size, notes, photo_sizes=photo_sizes,
                guidance=guidance)


def guidance_plan(args, config) -> Optional[Dict]:
    """{mode, scale} where the config has a classifier section (classifier guidance), else None."""
    section = config.get("classifier")
    if not section:
        if getattr(args, "classifier_scale", None) is not None or getattr(args, "classifier_ckpt", None):
            raise InputError(f"--classifier_scale / --classifier_ckpt need a config with a classifier section "
                             f"(e.g. imagenet_256_cc.yml); {args.config} has none")
        return None
    if not isinstance(section, dict):
        raise InputError(f"the classifier section of {args.config} must be a mapping of create_classifier keys")
    scale = args.classifier_scale if args.classifier_scale is not None else section.get("classifier_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale >= 0:
        raise InputError(f"classifier.classifier_scale in {args.config} must be a number >= 0 (got {scale!r})")
    return {"mode": args.guidance, "scale": float(scale)}
