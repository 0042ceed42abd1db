"""bench/server_cpu.py's split of a server's threads into llama.cpp's compute threads and the serving side."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.server_cpu import split_per_token  # noqa: E402


def test_the_busiest_threads_are_compute_and_the_rest_serving():
    before = {1: 100.0, 2: 50.0, 3: 40.0, 4: 5.0}
    after = {1: 130.0, 2: 95.0, 3: 85.0, 4: 5.5, 5: 2.0}  # thread 5 started between the readings
    compute, serving = split_per_token(before, after, tokens=10, compute_threads=2)
    assert compute == (45.0 + 45.0) / 10  # threads 2 and 3 spent the most since the first reading
    assert serving == (30.0 + 0.5 + 2.0) / 10


def test_a_thread_gone_by_the_second_reading_is_not_counted():
    compute, serving = split_per_token({1: 10.0, 2: 10.0, 9: 3.0}, {1: 20.0, 2: 12.0}, tokens=2, compute_threads=1)
    assert (compute, serving) == (5.0, 1.0)
