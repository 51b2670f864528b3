import csv
import json

from hermes_env.cli import main
from tests.conftest import ROOT


def test_simulate_writes_per_application_csv_and_summary(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["simulate", str(ROOT / "configs" / "experiments" / "small.yaml"), "--scheduler", "fcfs",
                 "--prewarm", "none", "--seed", "3", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "applications.csv")))
    summary = json.loads((out / "summary.json").read_text())
    assert len(rows) == summary["applications"] == 200
    assert {"id", "template", "class", "arrival", "completion", "queue_times", "service_times"} <= set(rows[0])
    for r in rows:
        stages = r["stages"].split(";")
        assert len(stages) == len(r["queue_times"].split(";")) == len(r["service_times"].split(";"))
        assert float(r["completion"]) >= float(r["arrival"])
    assert summary["seed"] == 3 and summary["scheduler"] == "fcfs"
    assert "200 applications" in capsys.readouterr().out


def test_default_experiment_config_loads():
    from hermes_env.sim import ExperimentConfig

    cfg = ExperimentConfig.from_yaml(ROOT / "configs" / "experiments" / "default.yaml")
    assert len(cfg.workload.applications) == 9
    assert cfg.cluster.llm_backends[0].kv_capacity_tokens > 100_000


def test_unknown_scheduler_is_refused(capsys, tmp_path):
    assert main(["simulate", str(ROOT / "configs" / "experiments" / "small.yaml"), "--scheduler", "lifo",
                 "--out", str(tmp_path)]) == 2
    assert "scheduler: unknown scheduler 'lifo'" in capsys.readouterr().err
