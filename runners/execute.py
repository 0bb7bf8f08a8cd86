"""Phase 2 of a restoration run: load the network, decide what to resume, hold the folder's lock, restore, finalize.

`execute` compares the folder's run.json with the plan (runners/settings.py), has
rank 0 decide which images are pending, loads the network only if some are, takes
the output folder's lock, runs the batch loop (runners/batches.py) on this rank's
share and, on rank 0, rebuilds results.json from the records (runners/records.py).
`run` is the whole run: plan, then execute, under torchrun as one rank.
"""
import logging
import shlex
from typing import Dict, List, Optional

import torch

from runners import distributed
from runners.batches import _restore_all
from runners.devices import _precision
from runners.errors import InputError
from runners.plan import Plan, make_plan
from runners.records import _finished_records, finalize
from runners.results import atomic_write_json, comparison_table, read_json, settings_diff
from runners.settings import _file_digest, _normalised, _same_run, _spelled_once

LOG = logging.getLogger("equs")


def load_eps_model(plan: Plan):
    """The network as eps(x, t) in the precision and layout the flags ask for."""
    from guided_diffusion.checkpoints import (CheckpointError, download_advice, load_weights, resolve_checkpoint,
                                              verify_known_checksum)
    from guided_diffusion.models import EpsModel, build_model
    from runners.conditioning import load_classifier_for

    args = plan.args
    path = resolve_checkpoint(plan.config, exp=args.exp, override=args.ckpt)
    verify_known_checksum(path)   # a checkpoint with a published MD5 (LSUN) that no longer has it is refused
    model = build_model(plan.config)
    try:
        load_weights(model, path)
    except CheckpointError as err:
        advice = None if args.ckpt is not None else download_advice(path)
        if advice is None:
            raise
        raise CheckpointError(f"{err}; delete it and {advice}") from None
    model = model.to(plan.device).eval().requires_grad_(False)
    dtype = getattr(args, "dtype", "auto")
    eps_model = EpsModel(model, plan.config, dtype=None if dtype == "auto" else dtype,
                         channels_last=getattr(args, "channels_last", False), compile=getattr(args, "compile", False),
                         compile_mode=getattr(args, "compile_mode", None),
                         attention=getattr(args, "attention", "reference"))
    if plan.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels once
    LOG.info(f"model: {path} ({_precision(eps_model, plan.device)})")
    plan.classifier = load_classifier_for(plan)
    if plan.classifier is not None:
        LOG.info(f"classifier guidance: {plan.guidance['mode']}, scale {plan.guidance['scale']:g}")
    return eps_model, str(path)


def execute(plan: Plan) -> Optional[Dict]:
    """Restore the pending images (this rank's share) and, on rank 0, rebuild the results.

    Returns results.json's content on rank 0, None on the other ranks.
    """
    args, out, ctx = plan.args, plan.out, plan.dist
    previous = read_json(out.run_json)
    changed = previous and not args.overwrite and previous.get("fingerprint") != plan.fingerprint
    if changed:   # both runs' settings with the dataset and checkpoint as the files they name
        old_settings = _spelled_once(previous.get("settings") or {}, args.exp, plan.config)
        new_settings = _spelled_once(plan.settings, args.exp, plan.config)
    if changed and previous.get("fingerprint") and _same_run(old_settings, new_settings):
        # the same run spelled another way (--deg_scale 4 for the default 4, --transform without EquS):
        # continue under the folder's own settings, so that its records count
        plan.settings, plan.fingerprint = previous["settings"], previous["fingerprint"]
    if not (previous and previous.get("fingerprint")) and not args.overwrite:
        # run.json names the settings; without it (deleted, or damaged by hand) the records still
        # carry their fingerprints, and results made with other settings must not be mixed in
        others = sum(f != plan.fingerprint for f in out.record_fingerprints().values())
        if others:
            state = "damaged" if out.run_json.exists() else "missing"
            raise InputError(f"{out.root} holds {others} result(s) made with other settings, and its run.json, "
                             f"which names them, is {state}; rerun the command that made them to resume, "
                             f"choose another -i, or add --overwrite to discard those results")
    if previous and not args.overwrite and previous.get("fingerprint") != plan.fingerprint:
        # only the differences that block resuming (not a spelled-out default --deg_scale, ...)
        changes = settings_diff(_normalised(old_settings), _normalised(new_settings))
        raise InputError(f"{out.root} holds results made with other settings ({'; '.join(changes) or 'unknown'}); "
                         f"rerun with those settings to resume, choose another -i, or add --overwrite to discard "
                         f"those results")
    # Rank 0 alone reads the records and tells the others what is left, so that every rank
    # shards the very same list (a rank starting late must not see another's fresh records).
    state, done = None, {}
    if ctx.is_main:
        done = {} if args.overwrite else {r["name"]: r for r in _finished_records(out, plan.fingerprint)}
        moved = [(it, done[it.name]) for it in plan.items if it.name in done and done[it.name].get("index") != it.index]
        error = None
        if moved:   # an image's seed is its index: a record made at another index is not this run's image
            it, rec = moved[0]
            error = (f"the dataset changed since {out.root} was made: {it.name} was image {rec.get('index')} and is "
                     f"now image {it.index} ({len(moved)} image(s) moved); restore it into another -i, or add "
                     f"--overwrite to start this folder afresh")
        else:       # a file replaced under the same name: its record scores another image (records from
            # before 2026-11-27 have no source_sha and are not checked)
            edited = [it for it in plan.items if it.name in done and done[it.name].get("source_sha")
                      and done[it.name]["source_sha"] != _file_digest(it.path)]
            if edited:
                error = (f"the dataset changed since {out.root} was made: {edited[0].path} has new content "
                         f"({len(edited)} image(s) changed); restore it into another -i, or add --overwrite to "
                         f"start this folder afresh")
        state = ([it.name for it in plan.items if it.name not in done], [r.get("psnr") for r in done.values()], error)
    pending_names, earlier_psnr, error = ctx.broadcast(state)
    if error:   # on every rank, so that none waits for the others
        raise InputError(error)
    by_name = {it.name: it for it in plan.items}
    pending = [by_name[name] for name in pending_names]
    mine = ctx.shard(pending)
    # The first process on each node resolves (and if need be downloads) the checkpoint before
    # the others look for it; a missing checkpoint fails here, before any write.
    # A user error on one rank is raised on every rank (all_gather is also the barrier), so
    # that no rank is left waiting in a collective for one that has exited.
    eps_model, model_path = None, (previous or {}).get("checkpoint")
    model_id = (previous or {}).get("checkpoint_id")
    first_on_node = ctx.local_rank == 0

    def load(check: bool) -> Optional[str]:
        nonlocal eps_model, model_path, model_id
        try:
            eps_model, model_path = load_eps_model(plan)
            if check:
                model_id = _check_same_checkpoint(previous, done, model_path)
        except Exception as exc:
            if ctx.world_size == 1:
                raise
            if isinstance(exc, InputError):
                return str(exc)
            LOG.exception(f"rank {ctx.rank}: loading the model failed")   # the traceback, on this rank
            return f"rank {ctx.rank}: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        return None

    for phase_loads in (pending and first_on_node and (mine or ctx.is_main),
                        pending and not first_on_node and mine):
        error = load(ctx.is_main) if phase_loads else None
        errors = [e for e in ctx.all_gather(error) if e]
        if errors:
            raise InputError(errors[0])
    # (the second all_gather above: every rank has read the folder's state before rank 0 changes it)
    # (after the model: a run that cannot get its checkpoint reports only that)
    for note in plan.notes:
        LOG.info(note)
    LOG.info(f"{len(plan.items)} images, {len(plan.items) - len(pending)} already done; output: {out.root}")
    if ctx.world_size > 1:
        LOG.info(f"{ctx.world_size} processes ({ctx.backend}); {len(mine)} image(s) on rank {ctx.rank} ({plan.device})")

    lock, busy = None, None
    if ctx.is_main:
        out.root.mkdir(parents=True, exist_ok=True)
        lock = out.lock()
        if lock is None:
            busy = (f"another run is writing to {out.root} now; wait for it to finish (then this command "
                    f"resumes what is left), or choose another -i")
    if any(ctx.all_gather(busy)):     # on every rank (also the barrier before anyone writes)
        raise InputError(busy or f"another run is writing to {out.root} now")
    try:
        if ctx.is_main:
            if args.overwrite:
                out.clear()
            out.remove_stale_temporaries()
            atomic_write_json(out.run_json, {"fingerprint": plan.fingerprint, "settings": plan.settings,
                                             "checkpoint": model_path, "checkpoint_id": model_id,
                                             "command": "python main.py " + shlex.join(plan.argv)})
        ctx.barrier()
        if mine:
            _restore_all(plan, eps_model, mine, earlier_psnr if ctx.is_main else [], len(pending))
        written = [name for names in ctx.all_gather([it.name for it in mine]) for name in names]
        if not ctx.is_main:
            return None
        results = finalize(plan, model_path, fid=not args.no_fid)
        missing = sorted(set(written) - {r["name"] for r in results["images"]})
        if missing:
            LOG.warning(f"warning: {len(missing)} image(s) restored by other ranks are not visible here "
                        f"(e.g. {missing[0]}); the output folder must be shared by all nodes")
        LOG.info(comparison_table(results["summary"]))
        return results
    finally:
        if lock is not None:
            lock.release()


def _check_same_checkpoint(previous: Optional[dict], done: dict, model_path: str) -> str:
    """The loaded checkpoint's content id; refuses to add images restored by other weights
    (a retrained or replaced file at the same path) to finished ones."""
    from guided_diffusion.checkpoints import checkpoint_id

    model_id = checkpoint_id(model_path)
    before = (previous or {}).get("checkpoint_id")
    if done and before and before != model_id:
        raise InputError(f"the checkpoint {model_path} is not the one that restored the {len(done)} finished "
                         f"image(s) in this folder (its content changed since); add --overwrite to restore them "
                         f"all with it, or choose another -i")
    return model_id


def run(args, argv: List[str]) -> Optional[Dict]:
    """Plan and execute; under torchrun, as one rank of the process group."""
    ctx = distributed.env_context()
    plan = make_plan(args, argv, device_name=distributed.rank_device(args.device, ctx))
    if not ctx.is_main:
        LOG.setLevel(max(LOG.level, logging.WARNING))  # one voice: rank 0 reports, others only warn
    plan.dist = distributed.setup(ctx, plan.device)
    try:
        return execute(plan)
    finally:
        distributed.teardown(plan.dist)
