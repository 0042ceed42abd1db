"""Which instances the pool runs in the front's process: one at a time, the first, unless told otherwise or on Ray."""

from __future__ import annotations

from gallama.config import ModelSpec
from gallama.router.instances import WorkerInstance
from gallama.router.local_instance import LocalInstance
from gallama.router.pool import ModelPool

SPEC = ModelSpec(model_id="m", model_name="m")


def test_the_first_instance_runs_in_process_and_the_others_in_workers():
    pool = ModelPool(in_process=True)
    first, second = pool._instance(SPEC, 1), pool._instance(SPEC, 2)
    assert isinstance(first, LocalInstance) and isinstance(second, WorkerInstance)


def test_the_in_process_place_is_free_again_once_its_instance_stopped():
    pool = ModelPool(in_process=True)
    first = pool._instance(SPEC, 1)
    first._stop_watching()  # what stop() does first; a removed model's instance ends "stopped"
    assert isinstance(pool._instance(SPEC, 1), LocalInstance)


def test_worker_processes_or_a_ray_cluster_keep_every_instance_out_of_process():
    assert isinstance(ModelPool(in_process=False)._instance(SPEC, 1), WorkerInstance)

    class Cluster:  # the pool asks the cluster for its instances; a stand-in that says which it was asked for
        def instance(self, spec, index, log_level, store):
            return ("ray", index)

    assert ModelPool(in_process=True, cluster=Cluster())._instance(SPEC, 1) == ("ray", 1)
