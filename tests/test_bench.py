import json

import pytest
import yaml

from hermes_env.cli import main
from hermes_env.errors import ConfigError
from hermes_env.sim.bench import BenchConfig
from tests.conftest import ROOT


def small_bench(tmp_path, **extra):
    spec = {"experiment": str(ROOT / "configs" / "experiments" / "small.yaml"),
            "schedulers": ["fcfs", "gittins"], "prewarm": ["none", "pdgraph"], "seeds": 2,
            "reference": {"scheduler": "fcfs", "prewarm": "none"}, "loads": [0.5, 1.0], **extra}
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_bench_command_writes_table_csv_json_and_plots(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["bench", "--config", str(small_bench(tmp_path)), "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["rows"]
    assert len(rows) == 2 * 4  # loads x combinations
    for r in rows:
        assert r["seeds"] == 2 and r["jct_mean"] > 0 and r["jct_p50"] <= r["jct_p95"] <= r["jct_p99"]
        if (r["scheduler"], r["prewarm"]) == ("fcfs", "none"):
            assert r["jct_mean_ratio"] == pytest.approx(1.0) and r["cold_starts_ratio"] == pytest.approx(1.0)
    assert (out / "runs.csv").read_text().count("\n") == 1 + 2 * 4 * 2
    assert (out / "cdf.png").stat().st_size > 0 and (out / "load_sweep.png").stat().st_size > 0
    assert "fcfs" in capsys.readouterr().out
    # every load runs every combination on every seed
    runs = (out / "runs.csv").read_text().splitlines()
    assert sum(line.startswith("0.5,") for line in runs) == sum(line.startswith("1.0,") for line in runs) == 8


def test_bench_config_errors_are_named(tmp_path):
    with pytest.raises(ConfigError) as err:
        BenchConfig.from_yaml(small_bench(tmp_path, schedulers=["fcfs", "lottery"]))
    assert err.value.field == "bench.schedulers"
    with pytest.raises(ConfigError) as err:
        BenchConfig.from_yaml(small_bench(tmp_path, seeds=0))
    assert err.value.field == "bench.seeds"
    with pytest.raises(ConfigError) as err:
        BenchConfig.from_yaml(small_bench(tmp_path, colour="red"))
    assert err.value.field == "bench.colour"


def test_shipped_bench_configs_load():
    for path in (ROOT / "configs" / "bench").glob("*.yaml"):
        cfg = BenchConfig.from_yaml(path)
        assert cfg.experiment_at(cfg.loads[0]).workload.num_applications > 0
