"""The command line: the official DDNM/EquS flags, unchanged, plus this project's own.

`main(argv)` parses, runs, and turns every user error (bad flag value, missing
dataset or checkpoint, corrupt image, ...) into one line on stderr and exit
status 2; finished images are never deleted by an error. docs/cli.md explains
each flag; `python main.py --help` lists them.
"""
import argparse
import logging
import sys
from typing import List, Optional

LOG = logging.getLogger("equs")
VERBOSE_LEVELS = ("debug", "info", "warning", "error", "critical")
EXIT_USER_ERROR = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage text is in --help)."""

    def error(self, message):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see --help)\n")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except None: those flags say in their help which
    config value they fall back to."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="main.py",
        description="Zero-shot diffusion image restoration (DDNM, DDNM+, DDRM, with EquS / EquS+). "
                    "Accepts the official DDNM/EquS command lines unchanged; see docs/cli.md.",
        formatter_class=DefaultsHelpFormatter,
    )
    o = p.add_argument_group("official flags (DDNM / EquS)")
    o.add_argument("--config", required=True, help="model config: a file in configs/ (e.g. celeba_hq.yml) or a path")
    o.add_argument("--deg", required=True,
                   help="degradation: sr_averagepooling, sr_bicubic, deblur_uni, deblur_gauss, deblur_aniso, "
                        "colorization, cs_walshhadamard, cs_blockbased, inpainting, denoising; composites (run "
                        "with the simplified rule): mask_color_sr, sr_color, or parts joined by + applied left to "
                        "right, e.g. inpainting+colorization+sr_averagepooling")
    o.add_argument("--deg_scale", type=float, default=None,
                   help="degradation parameter: SR factor (e.g. 4) or CS ratio (e.g. 0.25); "
                        "unset = the operator's default")
    o.add_argument("--sigma_y", type=float, default=0.0,
                   help="measurement noise std in [0, 1] image units (doubled internally for the [-1, 1] model "
                        "space); > 0 selects DDNM+ / noisy DDRM")
    o.add_argument("--add_noise", action="store_true",
                   help="actually add Gaussian noise of std sigma_y to y (without it y stays clean, as in the "
                        "reference)")
    o.add_argument("--eta", type=float, default=0.85, help="stochasticity of each step (DDIM eta; DDRM etaA = etaC)")
    o.add_argument("--path_y", required=True,
                   help="dataset: folder <exp>/datasets/NAME, or a path; searched recursively")
    o.add_argument("-i", "--image_folder", default="images",
                   help="outputs go to <exp>/image_samples/<image_folder>/")
    o.add_argument("--exp", default="exp", help="root for datasets/, logs/ (checkpoints), inp_masks/, image_samples/")
    o.add_argument("--subset_start", type=int, default=-1, help="first image (index in the dataset order)")
    o.add_argument("--subset_end", type=int, default=-1, help="one past the last image (-1 = to the end)")
    o.add_argument("--seed", type=int, default=1234, help="run seed; image i uses seed*100003 + i")
    o.add_argument("--ni", action="store_true",
                   help="no interaction (accepted; unlike the reference it never deletes earlier results)")
    o.add_argument("--verbose", default="info", help="log level: " + " | ".join(VERBOSE_LEVELS))
    o.add_argument("-n", "--noise_type", default="gaussian", help="measurement noise: only gaussian is supported")
    o.add_argument("--EquS", action="store_true", help="equivariant sampling (dual trajectory, horizontal flip)")
    o.add_argument("--EquSplus", action="store_true", help="EquS with the timestep-aware schedule (TAS)")
    o.add_argument("--timesteps", type=int, default=None, help="DDNM/DDRM spelling of --steps")
    o.add_argument("--etaB", type=float, default=1.0, help="DDRM's etaB (measured coordinates)")
    o.add_argument("--simplified", action="store_true",
                   help="the reference's SVD-free DDNM / DDNM+ step rule (A and an approximate inverse only); "
                        "composite degradations always use it")
    o.add_argument("--resize_y", action="store_true",
                   help="each input file is the measurement y itself (a real low-resolution, grey or damaged "
                        "photo), restored at its own size (x the SR factor); no ground truth, consistency only")
    o.add_argument("--class", dest="class_label", type=int, default=None,
                   help="class-conditional / classifier-guided models: this ImageNet class for every image "
                        "(default: each image's class from the list file)")
    o.add_argument("--doc", default="", help="accepted for DDRM compatibility; recorded only")
    o.add_argument("--comment", default="", help="free text, recorded in results.json")
    o.add_argument("-s", "--sample", action="store_true", help="accepted for compatibility (always samples)")

    n = p.add_argument_group("this project's flags")
    n.add_argument("--sampler", choices=("ddnm", "ddrm", "simplified"), default="ddnm",
                   help="step rule: ddnm (DDNM+ when sigma_y > 0), ddrm, or simplified (= --simplified)")
    n.add_argument("--simplified_noise", choices=("reference", "ddim"), default=None,
                   help="the simplified rule's noise: reference (default; the official loop: std sqrt(1 - abar^2), "
                        "scaled by gamma even noise-free) or ddim (sqrt(1 - abar): DDNM's update when sigma_y = 0)")
    n.add_argument("--native_size", action="store_true",
                   help="each image keeps its own size (cropped to a multiple of the SR factor), non-square "
                        "included; the network runs on tiles of its own size")
    n.add_argument("--tiling", choices=("average", "mask_shift"), default="average",
                   help="images larger than the network (--native_size, --resize_y): average = every window's "
                        "eps at every step, blended over the overlaps; mask_shift = the reference's hq_demo "
                        "order, windows restored one after another holding their overlap to finished ones")
    n.add_argument("--tile_blend", choices=("cosine", "gaussian", "uniform"), default="cosine",
                   help="--tiling average: each window's weight: cosine (sin^2, ~0 at the window's edges, where the "
                        "network predicts worst), gaussian (sigma = window / 4) or uniform (a plain mean)")
    n.add_argument("--tile_stride", type=int, default=None,
                   help="step between windows in pixels (default: half the model's image size)")
    n.add_argument("--guidance", choices=("correct", "reference"), default="correct",
                   help="classifier guidance (configs with a classifier section, e.g. imagenet_256_cc.yml): "
                        "correct = gradient at the current x_t for the image's own class; reference = the "
                        "official runner's (class 951 for every image, gradient at the initial x_T)")
    n.add_argument("--classifier_scale", type=float, default=None,
                   help="classifier guidance scale (default: classifier.classifier_scale of the config)")
    n.add_argument("--classifier_ckpt", default=None,
                   help="classifier checkpoint (default: the config's classifier.checkpoint under <exp>/)")
    n.add_argument("--equs_mode", choices=("alternate", "average"), default=None,
                   help="EquS variant: alternate (the paper: every other step on T(x_t)) or average "
                        "(eps averaged over the group, one batched pass); implies EquS")
    n.add_argument("--transform", default="hflip",
                   help="EquS transform: hflip, vflip, rot90, rot180, rot270, shift8, or a set: random, d4, "
                        "flips, rotations, 'hflip,rot90'")
    n.add_argument("--eps_mapping", choices=("official", "consistent"), default="official",
                   help="EquS: official = the update uses the model's eps as it came; consistent = eps mapped "
                        "back with T^-1 like x0")
    n.add_argument("--clip_x0", action="store_true", default=None,
                   help="clamp each x0 prediction to [-1, 1] before the projection (guided-diffusion's "
                        "clip_denoised; the official DDNM does not); default: sampling.clip_x0 of the config, else off")
    n.add_argument("--steps", type=int, default=None, help="sampling steps (default: time_travel.T_sampling of the config)")
    n.add_argument("--travel_length", type=int, default=None,
                   help="RePaint time travel: jump back this many steps (default: time_travel.travel_length of the "
                        "config; 1 = none)")
    n.add_argument("--travel_repeat", type=int, default=None,
                   help="RePaint time travel: go over each jump this many times (default: time_travel.travel_repeat "
                        "of the config; 1 = none)")
    n.add_argument("--travel_from", choices=("x0", "x0_hat"), default="x0",
                   help="what a time-travel jump re-noises: x0 = the model's prediction before the projection "
                        "(the official DDNM), x0_hat = the projected one, consistent with y")
    n.add_argument("--schedule", choices=("uniform", "tas", "tas_dedup"), default=None,
                   help="timestep schedule (default: uniform; tas with --EquSplus)")
    n.add_argument("--batch_size", type=int, default=None,
                   help="images per batch (default: sampling.batch_size of the config); with --native_size / "
                        "--resize_y, windows per network forward (images go one at a time)")
    n.add_argument("--device", default=None,
                   help="torch device (default: cuda if available, else cpu; under torchrun cuda:LOCAL_RANK)")
    n.add_argument("--dtype", choices=("auto", "fp32", "fp16", "bf16"), default="auto",
                   help="network precision: auto = the config's use_fp16 on CUDA (guided-diffusion's fp16 body), "
                        "else fp32; fp16 / bf16 force it for either UNet (the sampler stays fp32)")
    n.add_argument("--channels_last", action="store_true",
                   help="run the network in channels-last (NHWC) layout (slower for both UNets on an H100: "
                        "their GroupNorms convert back; see docs/cli.md)")
    n.add_argument("--compile", action="store_true",
                   help="run the network through torch.compile (slow first batch, faster afterwards)")
    n.add_argument("--compile_mode", default=None, choices=("default", "reduce-overhead", "max-autotune"),
                   help="torch.compile's mode with --compile (reduce-overhead: CUDA graphs)")
    n.add_argument("--attention", choices=("reference", "sdpa"), default="reference",
                   help="attention blocks: reference (explicit product, float32 softmax, as the original code) "
                        "or sdpa (PyTorch's fused scaled_dot_product_attention; equal up to float rounding)")
    n.add_argument("--mask", default=None,
                   help="inpainting mask: .npy or image file (1/bright = kept; square, side = image size or a "
                        "multiple; with --native_size / --resize_y: the photo's restored size), or random:R / box:R; "
                        "default <exp>/inp_masks/mask.npy if present, else the built-in mask")
    n.add_argument("--lambda_mode", choices=("reference", "svd"), default="reference",
                   help="DDNM+ noise scalings: the reference's formulas (defects included) or the operator's SVD")
    n.add_argument("--blur_svd", choices=("reference", "matched"), default="reference",
                   help="deblurring SVD: the reference's singular-value order, or the true truncated blur")
    n.add_argument("--ckpt", default=None, help="checkpoint file (default: the config's model.checkpoint under <exp>/)")
    n.add_argument("--overwrite", action="store_true", help="discard earlier results in the output folder and start afresh")
    n.add_argument("--lpips_net", choices=("vgg", "alex", "none"), default="vgg",
                   help="backbone of the correctly normalised LPIPS (the official variant is always VGG)")
    n.add_argument("--no_fid", action="store_true", help="skip FID over the output folder at the end of the run")
    return p


class _StreamByLevel(logging.Handler):
    """Progress and notes to stdout, warnings and errors to stderr (looked up at emit time)."""

    def emit(self, record):
        stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        stream.write(self.format(record) + "\n")
        stream.flush()


def configure_logging(level: str) -> None:
    LOG.setLevel(getattr(logging, level.upper()))
    if not LOG.handlers:
        handler = _StreamByLevel()
        handler.setFormatter(logging.Formatter("%(message)s"))
        LOG.addHandler(handler)
    LOG.propagate = False


def _user_errors():
    from runners.errors import InputError

    # OSError: a path the system refuses (a name over 255 bytes, a full disk), reported with its path
    errors = [InputError, ValueError, OSError]
    try:
        from guided_diffusion.checkpoints import CheckpointError

        errors.append(CheckpointError)
    except ImportError:
        pass
    return tuple(errors)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose.lower() not in VERBOSE_LEVELS:
        parser.error(f"--verbose {args.verbose!r} is not one of: {', '.join(VERBOSE_LEVELS)}")
    configure_logging(args.verbose.lower())
    try:
        from runners.restoration import run

        run(args, argv)
    except KeyboardInterrupt:
        print("interrupted: finished images are kept; rerun the same command to resume", file=sys.stderr)
        return 130
    except _user_errors() as exc:
        if LOG.isEnabledFor(logging.DEBUG):
            import traceback

            traceback.print_exc()
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, OSError) and exc.filename:
            message = f"{exc.strerror or type(exc).__name__}: {exc.filename}"
        elif isinstance(exc, OSError) and exc.strerror:      # raised with a message of ours, no file name
            message = exc.strerror
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0
