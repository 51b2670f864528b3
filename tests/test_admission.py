"""Admission and load shedding by SLO tier: tiers in the workload, the admission policies, goodput per tier."""

import math
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import yaml
from gymnasium.utils.env_checker import check_env

from baselines.admission import ClairvoyantAdmission, TokenBucket
from hermes_env.envs.hermes import load_experiment
from hermes_env.errors import ConfigError
from hermes_env.sim import ExperimentConfig, Simulation
from hermes_env.sim.bench import BenchConfig, _summarise, format_table, run_cell
from hermes_env.sim.policies import ADMIT, DEFER, REJECT, AdmissionPolicy, make_admission
from hermes_env.sim.workload import TIERS
from tests.conftest import ROOT


def overload(n=150, **workload):
    return load_experiment("overload-slo", {"workload": {"num_applications": n, **workload}})


def test_a_token_bucket_decides_as_computed_by_hand():
    """Rate 1/s, burst 2, starting full: 0 takes a token (1 left), 0.1 takes one (0.1 left), 0.2 finds 0.2: rejected;
    1.2 finds 1.2: admitted (0.2 left); 1.3 finds 0.3: rejected; a critical one at 1.4 finds 0.4 and is admitted
    without a token; 2.0 finds 1.0: admitted."""
    bucket = TokenBucket.from_arg("1:2")
    sim = SimpleNamespace(may_reject=lambda app: app.tier != "critical")
    arrivals = [(0.0, "standard"), (0.1, "sheddable"), (0.2, "standard"), (1.2, "standard"), (1.3, "sheddable"),
                (1.4, "critical"), (2.0, "standard")]
    orders = [bucket.admit(sim, SimpleNamespace(tier=tier), t) for t, tier in arrivals]
    assert orders == [ADMIT, ADMIT, REJECT, ADMIT, REJECT, ADMIT, ADMIT]
    assert bucket.tokens == pytest.approx(0.0)


def test_tiers_map_classes_and_unknown_names_are_one_named_error():
    cfg = load_experiment("contended", None)
    assert {m.tier for m in cfg.workload.applications if m.app_class == "real_time"} == {"critical"}
    assert {m.tier for m in cfg.workload.applications if m.app_class == "best_effort"} == {"standard"}
    spec = yaml.safe_load((ROOT / "configs" / "experiments" / "overload-slo.yaml").read_text())
    base = ROOT / "configs" / "experiments"
    for override, field in (({"applications": [{"template": "rag", "tier": "gold"}]}, "workload.applications[0].tier"),
                            ({"tiers": {"gold": {"slo": 5}}}, "workload.tiers.gold"),
                            ({"tiers": {"standard": {"max_defer": -1}}}, "workload.tiers.standard.max_defer"),
                            ({"tiers": {"critical": {"reject": "no"}}}, "workload.tiers.critical.reject")):
        with pytest.raises(ConfigError) as err:
            load_experiment({**spec, "cluster": str(base / spec["cluster"]), "workload": str(base / spec["workload"])},
                            {"workload": override})
        assert err.value.field == field, str(err.value)
    sheddable = next(m for m in overload().workload.applications if m.tier == "sheddable")
    assert sheddable.slo == 120  # the tier's SLO where the entry gives none


@pytest.mark.parametrize("name", ["nosuch", "token_bucket", "token_bucket:1", "token_bucket:x:2", "oracle:1:0",
                                  "none:3"])
def test_bad_admission_names_are_one_named_error(name):
    with pytest.raises(ConfigError) as err:
        make_admission(name)
    assert err.value.field == "admission"


@pytest.mark.parametrize("policy", ["token_bucket:1.6:10", "queue_threshold:4:8", "oracle:1.6:60"])
def test_every_application_ends_once_and_protected_tiers_are_never_refused(policy):
    cfg = overload(100)
    sim = Simulation(cfg, seed=2, admission=policy, check_invariants=True)
    s = sim.run().summary
    rows = sim.completed
    assert sorted(a.id for a in rows) == list(range(cfg.workload.num_applications))
    tiers = s["tiers"]
    assert sum(t["applications"] for t in tiers.values()) == cfg.workload.num_applications
    assert tiers["critical"]["rejected"] == tiers["critical"]["deferred"] == 0
    assert sum(t["rejected"] for t in tiers.values()) > 0  # 1.3x capacity: something is shed
    for t in tiers.values():
        assert t["completed"] + t["rejected"] <= t["applications"] and t["slo_met"] <= t["completed"]
    rejected = [a for a in rows if a.failed.startswith("admission")]
    assert all(a.completion == a.arrival or a.failed == "admission: deferred past max_defer" for a in rejected)
    assert s["goodput"]["all"] == pytest.approx(sum(t["slo_met"] for t in tiers.values()) / sim.arrival_times[-1])
    assert sim.in_system == 0 and not sim.deferred


def test_a_deferred_application_waits_its_tiers_max_defer_then_is_rejected():
    class DeferAll(AdmissionPolicy):
        name = "defer_all"

        def admit(self, sim, app, now):
            return DEFER if sim.may_defer(app, now) else ADMIT if not sim.may_reject(app) else REJECT

    sim = Simulation(overload(60), seed=0, admission=DeferAll(), check_invariants=True)
    s = sim.run().summary
    for app in sim.completed:
        if app.tier == "critical":  # max_defer 0: never deferred, admitted at once
            assert math.isnan(app.deferred_at) and not app.failed
        else:  # deferred at arrival, asked again at every end, refused 30 s after arrival
            assert app.deferred_at == app.arrival and app.failed == "admission: deferred past max_defer"
            assert app.completion == pytest.approx(app.arrival + 30.0)
    assert s["tiers"]["standard"]["deferred"] == s["tiers"]["standard"]["rejected"] == \
        s["tiers"]["standard"]["applications"]
    assert s["failure_reasons"] == {"admission: deferred past max_defer": s["failed"]}


def test_an_order_a_tier_does_not_allow_is_one_named_error():
    class RejectAll(AdmissionPolicy):
        name = "reject_all"

        def admit(self, sim, app, now):
            return REJECT

    with pytest.raises(ConfigError, match="may not reject application .* of tier 'critical'") as err:
        Simulation(overload(40), seed=0, admission=RejectAll()).run()
    assert err.value.field == "admission"


def test_queue_threshold_sheds_only_past_its_thresholds_and_is_deterministic():
    runs = [Simulation(overload(), seed=1, admission="queue_threshold:4:8", keep_applications=False).run().summary
            for _ in range(2)]
    assert runs[0] == runs[1]
    s = runs[0]
    assert s["tiers"]["sheddable"]["rejected"] > 0 and s["tiers"]["standard"]["deferred"] > 0
    loose = Simulation(overload(), seed=1, admission="queue_threshold:100000:100000").run().summary
    none = Simulation(overload(), seed=1).run().summary
    assert loose["jct"] == none["jct"] and loose["tiers"] == none["tiers"]  # never past its thresholds: admits all


def test_the_clairvoyant_keeps_each_windows_admitted_work_within_its_budget():
    cfg = overload()
    sim = Simulation(cfg, seed=0, admission="oracle:1.6:60")
    policy: ClairvoyantAdmission = sim.admission
    cost = sim.cost
    work = [sum(float(run.service_times(cost).sum()) for run in sim.peek_realisation(i)) for i in range(150)]
    budget = 1.6 * 60 * sum(work) / len(work)
    tiers = [cfg.workload.applications[k].tier for k in sim.app_mix]
    for w in {int(t // 60) for t in sim.arrival_times}:
        members = [i for i, t in enumerate(sim.arrival_times) if int(t // 60) == w]
        admitted = [i for i in members if i in policy.admitted]
        assert {i for i in members if tiers[i] == "critical"} <= set(admitted)
        assert sum(work[i] for i in admitted if tiers[i] != "critical") <= budget + 1e-9
    s = sim.run().summary
    assert s["tiers"]["sheddable"]["rejected"] + s["tiers"]["standard"]["rejected"] == 150 - len(policy.admitted)


def test_the_default_admits_everyone_without_asking():
    cfg = overload(80)
    s = Simulation(cfg, seed=0).run().summary
    assert s["admission"] == "none" and s["failed"] == 0
    assert all(t["rejected"] == t["deferred"] == 0 for t in s["tiers"].values())
    assert set(s["goodput"]) == {"critical", "standard", "sheddable", "all"}


def test_the_bench_compares_admission_policies_on_goodput_per_tier(tmp_path):
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump({
        "experiment": {"cluster": str(ROOT / "configs" / "clusters" / "contended.yaml"),
                       "workload": {**yaml.safe_load((ROOT / "configs/workloads/overload-slo.yaml").read_text()),
                                    "num_applications": 40}},
        "schedulers": ["fcfs"], "admissions": ["none", "token_bucket:1.6:10"], "seeds": 2}))
    cfg = BenchConfig.from_yaml(path)
    assert "goodput_sheddable" in cfg.columns() and "rejected_critical" in cfg.columns()
    summary = _summarise(cfg, [run_cell(cfg, cell).row for cell in cfg.cells()])  # run_bench, without the plots
    rows = {r["admission"]: r for r in summary["rows"]}
    assert rows["none"]["goodput_ratio"] == pytest.approx(1.0) and rows["none"]["rejected_sheddable"] == 0
    assert summary["varying"] == ["admission"]
    assert "goodput" in format_table(summary) and "token_bucket:1.6:10" in format_table(summary)
    with pytest.raises(ConfigError) as err:
        BenchConfig.from_yaml(path, admissions=["lottery"])
    assert err.value.field == "admission"


def test_the_overload_experiment_loads():
    cfg = ExperimentConfig.from_yaml("overload-slo")
    assert {m.tier for m in cfg.workload.applications} == {"critical", "standard", "sheddable"}


def admission_env(env_id="hermes_env/Scheduling-v0", n=40, **kwargs):
    return gym.make(env_id, config="overload-slo", overrides={"workload": {"num_applications": n}},
                    admission_control=True, slo_miss_weight=kwargs.pop("slo_miss_weight", 5.0), **kwargs).unwrapped


@pytest.mark.parametrize("env_id", ["hermes_env/Scheduling-v0", "hermes_env/Joint-v0"])
def test_the_env_checker_passes_with_the_admission_part(env_id):
    env = admission_env(env_id, n=30)
    check_env(env, skip_render_check=True)
    assert env.action_space.nvec[-1] == 3 and env.observation_space["admission"].shape == (14,)


def test_admission_decisions_are_masked_by_tier_and_the_return_prices_rejections():
    env = admission_env()
    tiers = []
    for seed in (3, 3):
        rng = np.random.default_rng(0)
        obs, info = env.reset(seed=seed)
        total, k = 0.0, env.action_space.nvec[0]
        while True:
            mask = info["action_mask"]
            if info["decision"] == "admit":
                tier = TIERS[info["admission_tier"]]
                assert tier != "critical" and mask[:k].tolist() == [True] + [False] * (k - 1)
                assert mask[k:].tolist() == [True, obs["admission"][9] == 1, True] and obs["admission"][0] == 1
                tiers.append(tier)
            else:
                assert info["admission_tier"] == -1 and mask[k:].tolist() == [True, False, False]
            action = [rng.choice(np.flatnonzero(mask[:k])), rng.choice(np.flatnonzero(mask[k:]))]
            obs, reward, terminated, truncated, info = env.step(action)
            total += reward
            if terminated or truncated:
                break
        sim = env.sim
        jct = sum(app.completion - app.arrival for app in sim.completed)
        assert len(sim.completed) == 40 and total == pytest.approx(-jct - 5.0 * sim.slo_missed, rel=1e-9)
        assert info["rejected"] == sum(t["rejected"] for t in sim.recorder.tiers.values()) > 0
    assert tiers[: len(tiers) // 2] == tiers[len(tiers) // 2:]  # the same seed, the same decisions


def test_admission_options_are_checked():
    for kwargs, field in (({"env_id": "hermes_env/Routing-v0"}, "admission_control"),
                          ({"slo_miss_weight": 0.0}, "slo_miss_weight"),
                          ({"admission": "token_bucket:1:1"}, "admission")):
        with pytest.raises(ConfigError) as err:
            admission_env(**kwargs)
        assert err.value.field == field
    env = gym.make("hermes_env/Scheduling-v0", config="overload-slo", admission="token_bucket:1.6:10",
                   overrides={"workload": {"num_applications": 40}}).unwrapped
    env.reset(seed=0)
    assert isinstance(env.action_space, gym.spaces.Discrete) and env.sim.admission.name == "token_bucket:1.6:10"


def test_simulate_takes_an_admission_policy(tmp_path, capsys):
    from hermes_env.cli import main

    workload = yaml.safe_load((ROOT / "configs/workloads/overload-slo.yaml").read_text())
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"cluster": str(ROOT / "configs/clusters/contended.yaml"),
                                    "workload": {**workload, "num_applications": 40}}))
    assert main(["simulate", str(path), "--admission", "queue_threshold:1:2", "--out", str(tmp_path / "o")]) == 0
    assert "admission queue_threshold:1:2 rejected" in capsys.readouterr().out
    rows = (tmp_path / "o" / "applications.csv").read_text().splitlines()
    assert rows[0].split(",")[3] == "tier" and any("admission: rejected" in r for r in rows[1:])
