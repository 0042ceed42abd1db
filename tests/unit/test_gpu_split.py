"""`gpus=` as llama.cpp placements: shares per GPU, the main GPU, and how many layers fit the budget."""

from __future__ import annotations

import pytest

from gallama.engines.llama_cpp.gpu_split import GIB, HEADROOM, ModelSize, describe_placement, place

SEVEN_GB = ModelSize(weights_bytes=7 * GIB, n_layer=32, kv_bytes=1 * GIB)


def test_no_gpu_means_the_cpu():
    assert place([], SEVEN_GB) is None
    assert place([0, 0], SEVEN_GB) is None
    assert describe_placement(None) == "CPU"


def test_a_model_that_fits_goes_whole_to_its_one_gpu():
    placement = place([0, 20, 0, 0], SEVEN_GB)
    assert placement.n_gpu_layers == 33  # every layer and the output layer
    assert placement.main_gpu == 1 and not placement.split
    assert placement.tensor_split == (0.0, 1.0, 0.0, 0.0)


def test_gb_per_gpu_are_the_shares_of_a_split():
    placement = place([22, 22, 10, 0], SEVEN_GB)
    assert placement.split and placement.main_gpu == 0
    assert placement.tensor_split == pytest.approx((22 / 54, 22 / 54, 10 / 54, 0.0))
    assert describe_placement(placement) == "every layer on GPUs (GPU 0: 41%, GPU 1: 41%, GPU 2: 19%)"
    assert describe_placement(place([4], SEVEN_GB)) == "14 of 32 layers on GPUs (GPU 0: 100%)"


def test_a_model_larger_than_the_budget_offloads_the_layers_that_fit():
    placement = place([4], SEVEN_GB)  # 8 GiB of weights and cache, 4 GiB given
    per_layer = 8 * GIB / 32
    assert placement.n_gpu_layers == int(4 * GIB * HEADROOM // per_layer) == 14
    assert place([0.1], SEVEN_GB).n_gpu_layers == 0  # less than a layer: nothing leaves the CPU


def test_the_kv_cache_counts_against_the_budget():
    assert place([8], ModelSize(7 * GIB, 32, 0)).n_gpu_layers == 33
    assert place([8], ModelSize(7 * GIB, 32, 2 * GIB)).n_gpu_layers < 32
