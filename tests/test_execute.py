"""How the Ray layer asks for its actors."""

from __future__ import annotations

from fuyu_ray.driver.execute import ACTOR_RESTARTS, actor_options


def test_actors_ask_for_the_cell_resources_and_restart():
    options = actor_options("w", {"CPU": 2, "GPU": 1, "bench_node": 0.01}, environ={})
    assert options == {
        "name": "w",
        "num_cpus": 2,
        "num_gpus": 1,
        "resources": {"bench_node": 0.01},
        "max_restarts": ACTOR_RESTARTS,
    }


def test_measured_peaks_set_on_the_driver_reach_the_actors():
    """Actors inherit their node's environment, not the driver's."""
    environ = {"FUYU_RAY_PEAK_BANDWIDTH_GBPS": "4300", "FUYU_RAY_PEAK_TFLOPS": "790", "OTHER": "x"}
    options = actor_options("w", {"CPU": 1}, environ=environ)
    assert options["runtime_env"] == {
        "env_vars": {"FUYU_RAY_PEAK_BANDWIDTH_GBPS": "4300", "FUYU_RAY_PEAK_TFLOPS": "790"}
    }
