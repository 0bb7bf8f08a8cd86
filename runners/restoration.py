"""One restoration run: flags -> plan -> images -> y -> sampler -> saved images + metrics -> results.

The runner does no mathematics: operators, samplers and metrics come from
`functions/`, networks from `guided_diffusion/`, data and bookkeeping from the
sibling modules. This module is the public entry; the run lives in:

    runners/plan.py      phase 1: flags, config, dataset, operator -> Plan (make_plan)
    runners/checks.py    the checks make_plan runs on flags, config values, masks, output paths
    runners/devices.py   --device / --dtype, sync_device, what the network computes in
    runners/settings.py  sampler config, the recorded settings, comparing two runs' settings
    runners/execute.py   phase 2: network, resume decisions, the folder's lock (execute, run)
    runners/batches.py   the batch loop: images -> y -> sampler -> saved images + records
    runners/records.py   records -> results.json, results.txt, grid.png (finalize)

Two phases:

1. `make_plan` checks every input and builds the operator, without writing
   anything or loading the network; a bad flag, dataset, mask or output path
   fails here with one line, before any earlier result could be touched.
2. `execute` loads the network only if images remain, then works through them
   in batches. Each finished image leaves its images and a small record;
   results.json / results.txt / grid.png are rebuilt from all records at the end.

Randomness is per image and independent of batching: image i (its index in the
dataset's full order) samples with seed `seed*100003 + i` (x_T and every
sampler draw) and draws its measurement noise from a CPU generator seeded with
`functions.noise.measurement_seed(seed, i)` (a stream apart from x_T's), so a
subset, a resumed run, a different batch size
or a different number of processes gives the same result for that image (on
the same device type; batched convolution kernels may differ from batch-1 ones
in the last float bits).

Under torchrun (runners/distributed.py) every rank plans the same run, rank 0
decides which images are still pending, each rank restores its share, and rank
0 merges all records into results.json after the others are done. Nothing is
read back from the device inside the sampling loop; the runner syncs once per
batch (timing, metrics, saving).
"""

# The public entry (cli, ablation, train, benchmarks and tests import these names from here).
# To replace a function in a test, patch it in the module that calls it (e.g. runners.execute.load_eps_model).
from runners.checks import MAX_SEED  # noqa: F401
from runners.devices import DTYPES, resolve_device, sync_device  # noqa: F401
from runners.execute import execute, load_eps_model, run  # noqa: F401
from runners.plan import SAMPLE_FOLDER, Plan, make_plan  # noqa: F401
from runners.records import finalize  # noqa: F401
from runners.settings import _sampler_config, _travels  # noqa: F401
