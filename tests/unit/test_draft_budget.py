import pytest

from gallama.engines.draft_budget import AcceptanceRate, StepCost, draft_lengths

# Step times of the bundled model on 2 CPU cores at ~450 tokens of context (ms by rows).
CPU_MS = {1: 17.0, 2: 30.0, 3: 47.0, 4: 52.0, 5: 60.0, 6: 67.0}


def cost_of(ms_by_rows: dict[int, float]) -> StepCost:
    cost = StepCost()
    for rows, ms in ms_by_rows.items():
        cost.observe(rows, ms / 1000)
    return cost


def test_step_cost_smooths_each_row_count_and_guesses_unmeasured_ones_low():
    cost = StepCost(decay=0.5)
    assert cost.estimate(1) is None
    cost.observe(1, 0.010)
    cost.observe(1, 0.020)
    cost.observe(4, 0.040)
    assert cost.estimate(1) == pytest.approx(0.015)
    assert cost.estimate(3) == pytest.approx(0.015)  # unmeasured: as cheap as the next smaller, so it gets tried
    assert cost.estimate(9) == pytest.approx(0.040)


def test_step_cost_forgets_what_it_has_not_measured_lately():
    cost = StepCost(forget_after=10)
    cost.observe(6, 0.5)  # a slow moment
    for _ in range(20):
        cost.observe(1, 0.02)
    assert cost.estimate(6) == pytest.approx(0.02)


def test_nothing_measured_drafts_the_whole_room():
    assert draft_lengths([0.1, 0.9], [5, 3], StepCost()) == [5, 3]


def test_free_rows_draft_the_whole_room():
    assert draft_lengths([0.3], [5], cost_of({r: 10.0 for r in range(1, 7)})) == [5]


def test_costly_rows_draft_only_where_they_pay():
    cost = cost_of(CPU_MS)
    assert draft_lengths([0.3], [5], cost) == [0]  # rejected drafts would slow the sequence down
    assert draft_lengths([0.6], [5], cost) == [0]
    assert draft_lengths([0.9], [5], cost) == [5]  # the first extra rows cost most: all or nothing here
    assert draft_lengths([0.9], [2], cost) == [1]  # a third row (47 ms) would not pay for 0.81 tokens


def test_in_a_batch_the_likelier_drafts_get_the_rows():
    cost = cost_of({2: 20.0, 3: 22.0, 4: 24.0, 5: 40.0, 6: 60.0})
    assert draft_lengths([0.95, 0.5], [5, 5], cost) == [2, 0]
    assert draft_lengths([0.9, 0.9], [0, 2], cost) == [0, 2]


def test_acceptance_follows_recent_drafts_and_fades_back_to_the_prior():
    rate = AcceptanceRate(prior=0.6)
    assert rate.value == pytest.approx(0.6)
    for _ in range(10):
        rate.step(verified=5, kept=1)
    assert rate.value < 0.3
    for _ in range(100):
        rate.step(verified=0, kept=0)
    assert rate.value == pytest.approx(0.6, abs=0.01)
