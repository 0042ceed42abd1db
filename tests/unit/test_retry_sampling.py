from gallama.engines.base import SamplingParams
from gallama.server.planning import RETRY_TEMPERATURE, retry_sampling


def test_a_retry_samples_even_at_temperature_zero():
    first = SamplingParams(temperature=0, seed=7)
    tries = [retry_sampling(first, attempt) for attempt in (1, 2, 3)]
    assert all(t.temperature >= RETRY_TEMPERATURE for t in tries)
    assert tries[2].temperature > tries[0].temperature  # each try draws more widely


def test_retry_seeds_differ_per_try_and_are_reproducible():
    first = SamplingParams(temperature=0.2, seed=7)
    seeds = [retry_sampling(first, attempt).seed for attempt in (1, 2, 3)]
    assert len({7, *seeds}) == 4
    assert seeds == [retry_sampling(first, attempt).seed for attempt in (1, 2, 3)]
    assert retry_sampling(SamplingParams(seed=None), 1).seed is None


def test_a_hotter_request_keeps_its_temperature():
    assert retry_sampling(SamplingParams(temperature=1.5, seed=1), 1).temperature == 1.5
