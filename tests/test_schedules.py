"""Timestep schedules against the reference's lists."""
import pytest

from functions.schedules import build_schedule, jump_units, timesteps_of
from tests.shared import fixture


@pytest.mark.parametrize("key,steps", [("quad_1000_10", 10), ("quad_1000_100", 100)])
def test_tas_matches_the_official_list(key, steps):
    assert timesteps_of(build_schedule(steps, "tas")) == fixture("sampler_goldens_64.pt")["schedules"][key]


@pytest.mark.parametrize("key,args", [("jump_10_1_1", (10, 1, 1)), ("jump_10_2_3", (10, 2, 3))])
def test_time_travel_matches_repaint(key, args):
    assert jump_units(*args) == fixture("sampler_goldens_64.pt")["schedules"][key]


def test_uniform_schedule_is_the_reference_one():
    assert timesteps_of(build_schedule(10, "uniform")) == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0, -1]
    assert len(build_schedule(100, "uniform")) == 100


def test_official_tas_repeats_t0_and_dedup_removes_it():
    official = timesteps_of(build_schedule(100, "tas"))
    assert official[-5:] == [0, 0, 0, 0, -1]
    dedup = timesteps_of(build_schedule(100, "tas_dedup"))
    assert len(dedup) == len(set(dedup)) == 98 and set(dedup) == set(official)
    assert all(a > b for a, b in zip(dedup, dedup[1:]))


def test_travel_steps_go_back_up_and_end_at_minus_one():
    sched = build_schedule(10, "uniform", travel_length=2, travel_repeat=3)
    assert sum(not s.is_reverse for s in sched) > 0
    assert sched[-1].t_next == -1 and all(s.t_next == s2.t for s, s2 in zip(sched, sched[1:]))


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="schedule 'cosine' is unknown; choose one of: uniform, tas, tas_dedup"):
        build_schedule(10, "cosine")
    with pytest.raises(ValueError, match="steps must be an integer in"):
        build_schedule(0)


def test_ddrm_uniform_schedule_is_ddrms_own_range():
    """DDRM samples range(0, T, T // steps) (runners/diffusion.py of bahjat-kawar/ddrm); DDNM samples
    u * (T // steps) for u < steps. They agree when steps divides T and differ otherwise."""
    from functions.samplers import SamplerConfig, schedule_for
    from functions.schedules import timesteps_of

    for steps in (7, 20, 30, 100, 300):
        ddrm = timesteps_of(schedule_for(SamplerConfig(sampler="ddrm", steps=steps)))
        assert ddrm == list(range(0, 1000, 1000 // steps))[::-1] + [-1]
        ddnm = timesteps_of(schedule_for(SamplerConfig(sampler="ddnm", steps=steps)))
        assert ddnm == [u * (1000 // steps) for u in range(steps)][::-1] + [-1]
        assert (ddrm == ddnm) == (1000 % steps == 0)
    assert len(schedule_for(SamplerConfig(sampler="ddrm", steps=30))) == 31
    tas = SamplerConfig(sampler="ddrm", steps=30, schedule="tas")
    assert schedule_for(tas) == schedule_for(SamplerConfig(sampler="ddnm", steps=30, schedule="tas"))
