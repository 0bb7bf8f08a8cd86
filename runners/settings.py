"""What a restoration run is: its sampler configuration, the settings it records, and how two runs' settings compare.

A run's settings (run.json) and their fingerprint decide whether an output folder
is resumed: `_sampler_config` and the helpers below build what goes in, `_spelled_once`,
`_normalised` and `_same_run` decide whether an earlier folder's settings are the
same run spelled another way. Nothing here writes a file.
"""
import hashlib
import json
from pathlib import Path
from typing import Dict, Optional

from runners import data
from runners.errors import InputError
from functions.transforms import get_transforms

# Above this first-step error gain (functions.samplers.first_step_error_gain) a plan gets a note. The demo
# prior, 4x SR with EquS+: 8 steps (gain 10) 23.9 dB, 7 steps (14) 6.1 dB, 10 steps (7) 25.4 dB.
FIRST_STEP_GAIN_NOTE = 8.0


def _draws_transforms(equs: Optional[str], transform: str) -> bool:
    """Alternate EquS over a set of transforms: one is drawn per transformed step."""
    return equs == "alternate" and len(get_transforms(transform)) > 1


def _step_rule(args) -> str:
    """--sampler, where --simplified or a composite degradation (which has no SVD) selects the simplified rule."""
    from functions.operators.composite import is_composite

    composite = is_composite(args.deg)
    if composite and args.sampler == "ddrm":
        raise InputError(f"--deg {args.deg} is a composite degradation, which runs with the simplified rule (no SVD); "
                         f"drop --sampler ddrm")
    if args.simplified and args.sampler == "ddrm":
        raise InputError("--simplified and --sampler ddrm are two step rules; choose one")
    return "simplified" if (composite or args.simplified or args.sampler == "simplified") else args.sampler


def _flag_or_config(args, name: str, travel: dict) -> int:
    """--travel_length / --travel_repeat when given, else the config's time_travel value (1: no travel)."""
    value = getattr(args, name, None)
    value = int(travel.get(name, 1)) if value is None else int(value)
    if value < 1:
        raise InputError(f"--{name} must be >= 1 (got {value}; 1 means no time travel)")
    return value


def _sampler_config(args, config):
    from functions.samplers import SamplerConfig

    travel = config.get("time_travel", {}) or {}
    steps = args.steps if args.steps is not None else args.timesteps
    if steps is None:
        steps = int(travel.get("T_sampling", 100))
    if steps < 1:
        raise InputError(f"--steps must be >= 1 (got {steps})")
    equs = args.equs_mode or ("alternate" if (args.EquS or args.EquSplus) else None)
    schedule = args.schedule or ("tas" if args.EquSplus else "uniform")
    rule = _step_rule(args)
    noise = getattr(args, "simplified_noise", None)
    if noise is not None and rule != "simplified":
        raise InputError("--simplified_noise applies to the simplified rule only; add --simplified (composite "
                         "degradations select it) or drop it")
    cfg = SamplerConfig(
        sampler=rule, simplified_noise=noise or "reference", eta=args.eta, etaB=args.etaB, sigma_y=2.0 * args.sigma_y, steps=int(steps),
        schedule=schedule, travel_length=_flag_or_config(args, "travel_length", travel),
        travel_repeat=_flag_or_config(args, "travel_repeat", travel), equs=equs, transform=args.transform,
        eps_mapping=args.eps_mapping, travel_from=getattr(args, "travel_from", "x0"),
        # seeds the per-step choice among several transforms; 0 otherwise, so that it stays out of
        # the fingerprint of runs it cannot affect
        transform_seed=int(args.seed) if _draws_transforms(equs, args.transform) else 0,
        clip_x0=bool(args.clip_x0 if getattr(args, "clip_x0", None) is not None
                     else (config.get("sampling") or {}).get("clip_x0", False)),
    )
    # build the schedule and the denoiser wrapper once now, so a bad value fails before anything is written
    from functions.equivariance import make_denoiser
    from functions.samplers import schedule_for

    num_timesteps = _num_timesteps(config)
    if cfg.steps > num_timesteps:
        raise InputError(f"--steps {cfg.steps} exceeds the {num_timesteps} diffusion timesteps of the config")
    schedule_for(cfg, num_timesteps)
    make_denoiser(lambda x, t: x, cfg.equs, cfg.transform, cfg.eps_mapping)
    return cfg


# Above this first-step error gain (functions.samplers.first_step_error_gain) a plan gets a note. The demo
# prior, 4x SR with EquS+: 8 steps (gain 10) 23.9 dB, 7 steps (14) 6.1 dB, 10 steps (7) 25.4 dB.


def _first_step_gain(sampler_cfg, config):
    """(first_step_error_gain, the first reverse step) of this run's schedule."""
    from functions.diffusion import NoiseLevels, make_betas
    from functions.samplers import first_step_error_gain, schedule_for

    levels = NoiseLevels(make_betas(config.get("diffusion", {})))
    schedule = schedule_for(sampler_cfg, levels.num_timesteps)
    first = next(s for s in schedule if s.is_reverse)
    return first_step_error_gain(schedule, levels), first


def _num_timesteps(config) -> int:
    """The config's number of diffusion timesteps T."""
    from functions.diffusion import make_betas

    return make_betas(config.get("diffusion", {})).numel()


def _travels(cfg, config) -> bool:
    """Whether the run's schedule has time-travel steps (jumps back up)."""
    from functions.samplers import schedule_for

    return any(not step.is_reverse for step in schedule_for(cfg, _num_timesteps(config)))


def _file_digest(path) -> Optional[str]:
    if path is None:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _path_y_setting(args, data_root: Path) -> str:
    """--path_y as the run records it: the dataset's name where the folder sits in <exp>/datasets
    (`--path_y exp/datasets/demo` is `demo`, as Table 1's labels expect), else as given."""
    datasets = (Path(args.exp) / "datasets").resolve()
    return data_root.name if data_root.parent.resolve() == datasets else args.path_y


def _is_default_checkpoint(path, config, exp) -> bool:
    from guided_diffusion.checkpoints import CheckpointError, default_checkpoint_path

    try:
        return Path(path).expanduser().resolve() == default_checkpoint_path(config, exp).resolve()
    except (CheckpointError, OSError):
        return False


def _ckpt_setting(args, config) -> Optional[str]:
    """--ckpt as the run records it: None where it names the config's own checkpoint file, which
    is the same run as without the flag (a file's content is compared on resume besides)."""
    if args.ckpt is None or _is_default_checkpoint(args.ckpt, config, args.exp):
        return None
    return args.ckpt


def _spelled_once(settings: Dict, exp: str, config) -> Dict:
    """settings with the dataset and the checkpoint as the files they name, for comparing two runs'
    settings (also those of folders made before either was recorded in one spelling): `demo` and
    `exp/datasets/demo` are one dataset; a --ckpt naming the config's own file is no --ckpt, and
    `ft.ckpt` and `./ft.ckpt` are one file (where the files exist)."""
    out = dict(settings)
    root = data.existing_root(settings["path_y"], exp) if settings.get("path_y") else None
    if root is not None:
        out["path_y"] = str(root.resolve())
    ckpt = settings.get("ckpt")
    if ckpt:
        if _is_default_checkpoint(ckpt, config, exp):
            out["ckpt"] = None
        elif Path(str(ckpt)).expanduser().is_file():
            out["ckpt"] = str(Path(str(ckpt)).expanduser().resolve())
    return out


def _same_run(old: Dict, new: Dict) -> bool:
    """Whether two settings differ only in values that cannot change the run: a spelled-out default
    --deg_scale, a deg_scale the degradation ignores, EquS's transform choice without EquS, a mask
    without inpainting."""
    return _normalised(old) == _normalised(new)


def _normalised(settings: Dict) -> Dict:
    """Settings with the values that cannot change the run brought to one spelling (see _same_run)."""
    from functions.operators import DEFAULT_CS_RATIO, DEFAULT_SR_FACTOR

    s = dict(settings)
    deg = s.get("deg")
    default = DEFAULT_SR_FACTOR if str(deg).startswith("sr_") else DEFAULT_CS_RATIO if str(deg).startswith("cs_") else None
    if default is None:
        s.pop("deg_scale", None)
    else:
        s["deg_scale"] = float(default if s.get("deg_scale") is None else s["deg_scale"])
    if not s.get("equs"):
        for key in ("transform", "eps_mapping", "transform_seed"):
            s.pop(key, None)
    if deg != "inpainting":
        s.pop("mask", None)
        s.pop("mask_sha", None)
    return json.loads(json.dumps(s, sort_keys=True, default=str))
