"""Timestep schedules: plain lists you can print.

A schedule is a list of `Step(u, t, u_next, t_next)`. `u` counts sampling steps
(T_sampling - 1 down to 0, then -1) and `t` is the diffusion timestep it maps to.
Steps with u_next < u are ordinary reverse steps; u_next > u is a RePaint-style
jump back in time. EquS decides which trajectory a step belongs to from the
parity of `u`, as the official code does with its step counter.
"""
from dataclasses import dataclass
from typing import List

import numpy as np

SCHEDULES = ("uniform", "tas", "tas_dedup")
TABLES = SCHEDULES + ("uniform_ddrm",)   # uniform_ddrm: what --sampler ddrm's uniform schedule runs


@dataclass(frozen=True)
class Step:
    u: int
    t: int
    u_next: int
    t_next: int

    @property
    def is_reverse(self) -> bool:
        return self.u_next < self.u


def jump_units(steps: int, travel_length: int = 1, travel_repeat: int = 1) -> List[int]:
    """RePaint's time-travel order in step units, ending with -1.

    Going down one unit at a time; at every multiple of travel_length (below
    steps - travel_length) it climbs back travel_length units, travel_repeat - 1
    times, before going on down.
    """
    if steps < 1 or travel_length < 1 or travel_repeat < 1:
        raise ValueError("steps, travel_length and travel_repeat must be positive integers")
    jumps_left = {u: travel_repeat - 1 for u in range(0, steps - travel_length, travel_length)}
    order, u = [], steps
    while u >= 1:
        u -= 1
        order.append(u)
        if jumps_left.get(u, 0) > 0:
            jumps_left[u] -= 1
            for _ in range(travel_length):
                u += 1
                order.append(u)
    order.append(-1)
    return order


def uniform_timesteps(steps: int, num_timesteps: int = 1000) -> List[int]:
    """Timestep of each step unit u = 0..steps-1 (the reference's u * (T // steps))."""
    skip = num_timesteps // steps
    return [u * skip for u in range(steps)]


def ddrm_timesteps(steps: int, num_timesteps: int = 1000) -> List[int]:
    """DDRM's own uniform list, range(0, T, T // steps): ceil(T / skip) steps, so a step count
    that does not divide T gives more steps than asked and starts nearer T (30 -> 31 steps
    from t = 990) than DDNM's u * skip for u < steps (30 steps from t = 957)."""
    return list(range(0, num_timesteps, num_timesteps // steps))


def tas_timesteps(steps: int, num_timesteps: int = 1000) -> List[int]:
    """EquS+'s timestep-aware schedule, as unit u = 0..steps-1 -> timestep.

    The official list is int(linspace(sqrt(T - 1), 0, steps) ** 2), largest first:
    quadratic spacing puts more steps at low noise. It repeats t = 0 at the end
    (three extra zeros at 100 steps).
    """
    grid = np.linspace(np.sqrt(num_timesteps - 1), 0, steps) ** 2
    largest_first = [int(v) for v in grid]
    return largest_first[::-1]


def build_schedule(steps: int, kind: str = "uniform", num_timesteps: int = 1000,
                   travel_length: int = 1, travel_repeat: int = 1) -> List[Step]:
    """The list of steps a sampler walks through.

    kind: 'uniform' (DDNM/DDRM), 'tas' (the official EquS+ list, duplicates kept so
    the NFE matches the paper's), 'tas_dedup' (the same timesteps with the repeated
    t = 0 steps removed, saving their NFEs).
    """
    if kind not in TABLES:
        raise ValueError(f"schedule '{kind}' is unknown; choose one of: {', '.join(SCHEDULES)}")
    if int(steps) != steps or steps < 1 or steps > num_timesteps:
        raise ValueError(f"steps must be an integer in [1, {num_timesteps}], got {steps}")
    steps = int(steps)
    if kind == "uniform":
        table = uniform_timesteps(steps, num_timesteps)
    elif kind == "uniform_ddrm":
        table = ddrm_timesteps(steps, num_timesteps)
        steps = len(table)
    else:
        table = tas_timesteps(steps, num_timesteps)
        if kind == "tas_dedup":
            kept = sorted(set(table))
            table, steps = kept, len(kept)
    order = jump_units(steps, travel_length, travel_repeat)

    def timestep(u):
        return -1 if u < 0 else table[u]

    return [Step(u, timestep(u), v, timestep(v)) for u, v in zip(order[:-1], order[1:])]


def timesteps_of(schedule: List[Step]) -> List[int]:
    """The plain list of timesteps visited, ending with -1 (as the reference prints it)."""
    return [s.t for s in schedule] + [schedule[-1].t_next]
