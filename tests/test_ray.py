"""Scaling out (issue 15): sweeps on Ray and on a process pool identical to serial ones, RLlib training with
masking, an RLlib checkpoint as a scheduler. A local Ray with 2 CPUs, started once for the module."""

import pytest
import yaml

ray = pytest.importorskip("ray")

from agents.config import TrainConfig  # noqa: E402
from hermes_env.sim import ExperimentConfig, Simulation  # noqa: E402
from hermes_env.sim.bench import BenchConfig, run_bench  # noqa: E402
from tests.conftest import ROOT  # noqa: E402

pytestmark = pytest.mark.xdist_group("ray")  # its module-scoped set-up runs once, on one worker


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def small_bench(tmp_path):
    path = tmp_path / "bench.yaml"
    spec = yaml.safe_load((ROOT / "configs" / "experiments" / "small.yaml").read_text())
    spec["cluster"] = str(ROOT / "configs" / "clusters" / "small.yaml")
    spec["workload"]["num_applications"] = 60
    path.write_text(yaml.safe_dump({"experiment": spec, "schedulers": ["fcfs", "gittins"], "prewarm": ["none"],
                                    "seeds": 2}))
    return BenchConfig.from_yaml(path)


def test_a_sweep_on_ray_and_on_processes_writes_the_serial_files(tmp_path):
    cfg = small_bench(tmp_path)
    assert len(cfg.cells()) == 4
    for executor in ("serial", "ray", "process"):
        run_bench(cfg, tmp_path / executor, progress=False, executor=executor, workers=2)
    for name in ("runs.csv", "summary.json", "table.txt"):
        serial = (tmp_path / "serial" / name).read_text()
        assert (tmp_path / "ray" / name).read_text() == serial
        assert (tmp_path / "process" / name).read_text() == serial


def test_a_failing_cell_is_reported_while_the_others_finish(tmp_path, monkeypatch):
    """run_cell returns a failure with its traceback instead of raising, so the other cells go on."""
    from hermes_env.sim import bench

    cfg = small_bench(tmp_path)
    real = bench.run_cell

    def one_fails(config, cell):
        if (cell.scheduler, cell.seed) == ("gittins", 1):
            return bench.CellResult(cell, None, [], "Traceback (most recent call last): a broken cell")
        return real(config, cell)

    monkeypatch.setattr(bench, "run_cell", one_fails)
    summary = run_bench(cfg, tmp_path / "out", progress=False)
    assert summary["missing_cells"] == 1 and summary["failed"][0]["cell"][1] == "gittins"
    assert "broken cell" in summary["failed"][0]["error"]
    assert (tmp_path / "out" / "runs.csv").read_text().count("\n") == 1 + 3


def test_rllib_trains_with_masking_and_its_checkpoint_schedules(tmp_path):
    from agents.rllib import train_rllib

    cfg = TrainConfig(env_id="hermes_env/Scheduling-v0", algorithm="rllib-ppo", num_env_runners=1,
                      total_timesteps=200, seed=0,
                      # raise on any masked action: training would fail if the masking let one through
                      env_kwargs={"overrides": {"workload": {"num_applications": 20}}, "slots": 16,
                                  "invalid_action": "raise"},
                      rllib={"train_batch_size": 200, "minibatch_size": 100, "num_epochs": 1, "fcnet_hiddens": [32]})
    path = train_rllib(cfg, tmp_path / "rllib", progress_bar=False)
    assert (tmp_path / "rllib" / "curve.csv").read_text().count("\n") >= 2
    result = Simulation(ExperimentConfig.from_yaml("contended"), scheduler=f"rllib:{path}", seed=0).run()
    assert result.summary["completed"] == 200 and result.summary["scheduler"] == f"rllib:{path}"
