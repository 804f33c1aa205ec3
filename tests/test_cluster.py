"""A node lost under load, on a real two-node Ray cluster on this machine (benchmarks.serve_faults: two raylets
started with Ray's own multi-node utility): the service keeps answering (what ran on the dead node is sent again
to the surviving worker) and a batch job finishes with every output present once and correct."""

from __future__ import annotations

import pytest

pytest.importorskip("ray")
pytest.importorskip("ray.serve")
pytest.importorskip("ray.data")


@pytest.mark.slow
def test_a_worker_node_killed_under_load_loses_no_request_and_no_output():
    from benchmarks.serve_faults import run

    results = run(clients=2, warmup=4, after_s=8.0, steps=5, images=6, batch_steps=10)
    service, job = results["service"], results["batch_job"]
    assert service["workers_answering_before_kill"] == 2, service  # one worker on each node before the kill
    assert service["failed"] == 0, service  # nothing lost: requests on the dead node were sent again
    assert service["answered_after_kill"] > 0 and service["recovery_s"] is not None, service
    assert job["returncode"] == 0 and job["outputs_as_expected"], job  # every output once, no temporary file
    # each output is the in-process upscale's at a worker's one thread, to the 8-bit level (float sums at another
    # thread count may round a value the other way)
    assert job["outputs_within_one_level_of_in_process"] == job["images"], job
