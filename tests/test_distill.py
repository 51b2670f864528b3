"""The planner distilled into a fast policy (agents/distill.py), at tiny sizes: the teacher's labels are the
planner's choices, DAgger writes a checkpoint and its curve, ``agent:`` loads it. Long training is never
part of the suite (configs/train/*-distill.yaml, on a bigger machine)."""

import csv

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from agents.distill import DistillConfig, Teacher, distill, distilled_policy, main  # noqa: E402
from agents.scheduler import agent_policy  # noqa: E402
from hermes_env.errors import ConfigError  # noqa: E402
from hermes_env.sim.metrics import summarise  # noqa: E402
from hermes_env.sim.workload import ArrivalConfig  # noqa: E402
from hermes_env.tasks import episode_objective, run_policy  # noqa: E402

pytestmark = pytest.mark.xdist_group("agents")
TEACHER = "rollout:{best}@futures=1,horizon=5,width=2"


def test_the_teacher_deciding_on_copies_of_the_environment_is_the_planner():
    # Acting on the teacher's label at every scheduling decision reproduces the headless planner's episode
    # exactly: the copy hands the planner the decision the environment would and maps its choice to the slot.
    cfg = DistillConfig(task="sched-contended-mean", fraction=0.01)  # 30 applications
    task = cfg.shortened()
    env = task.env()
    teacher = Teacher(task, TEACHER.format(best="gittins"), env)
    _, info = env.reset(seed=3, options={"simulation_seed": 3})
    done = False
    while not done:
        label = teacher.label(env)
        assert label is not None and info["action_mask"][label[0]]
        _, _, done, _, info = env.step(int(label[0]))
    mine = episode_objective(task, env, summarise(env.sim).summary)[0]
    assert teacher.labels > 5
    assert mine == run_policy(task, TEACHER.format(best="gittins"), 3)[0]


def test_dagger_writes_a_checkpoint_agent_loads_and_its_curve(tmp_path):
    cfg = DistillConfig(task="autoscaling-cycles-cost", teacher=TEACHER, best="all", fraction=0.0075,
                        iterations=1, seeds=(0, 1), epochs=60, hidden=32)
    path = distill(cfg, tmp_path, workers=1, log=lambda line: None)
    rows = list(csv.DictReader(open(tmp_path / "curve.csv")))
    assert [r["driver"] for r in rows] == ["teacher", "student", "student (final, no labels)"]
    assert int(rows[1]["labels"]) == int(rows[0]["labels"]) + int(rows[1]["new_labels"]) > 0
    assert float(rows[1]["fit_accuracy"]) >= 0.9  # a few dozen labels are learned
    assert float(rows[0]["teacher_s_per_label"]) > 0 and float(rows[2]["student_s_per_decision"]) > 0
    task = cfg.shortened()
    env = task.env()
    for act in (agent_policy(str(path), env), distilled_policy(path, env)):
        obs, info = env.reset(seed=5, options={"simulation_seed": 5})
        done = False
        while not done:
            action = act(obs, info["action_mask"])
            assert info["action_mask"][np.arange(len(action)) * 3 + action].all()  # always a valid order
            obs, _, done, _, info = env.step(action)
    other = DistillConfig(task="sched-contended-mean", fraction=0.01).shortened().env()
    with pytest.raises(ConfigError, match="distilled for hermes_env/Autoscaling-v0"):
        distilled_policy(path, other)


def test_bad_distill_configs_fail_naming_the_field(tmp_path, capsys):
    with pytest.raises(ConfigError, match="distill.seeds"):
        DistillConfig(task="autoscaling-cycles-cost", seeds=(995, 10)).check()  # the held-out seeds are 1000-1005
    with pytest.raises(ConfigError, match="distill.task"):
        DistillConfig(task="routing-mix-mean").check()
    with pytest.raises(ConfigError, match="distill.teacher"):
        DistillConfig(task="autoscaling-cycles-cost", teacher="gittins").check()
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: autoscaling-cycles-cost\nepoch: 3\n")
    assert main(["--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().out.startswith("python -m agents.distill: distill.epoch: is not a distill field")
    assert not (tmp_path / "o").exists()


def test_expected_arrivals_of_a_declared_process():
    cycle = ArrivalConfig.from_dict({"process": "time_varying", "schedule": [{"duration": 10, "rate": 1},
                                                                             {"duration": 10, "rate": 3}]}, "a")
    assert [cycle.expected_arrivals(t) for t in (5, 15, 20, 25)] == [5, 25, 40, 45]  # the cycle repeats
    assert ArrivalConfig.from_dict({"process": "poisson", "rate": 2}, "a").expected_arrivals(3) == 6


SHIPPED = ["autoscaling-cycles-cost-distill", "autoscaling-slowstart-pricey-distill", "hetero-slow-cost-distill",
           "autoscaling-70b-agentic-cost-distill", "batches-scale-to-zero-cost-distill", "two-model-slow-cost-distill"]


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_student_loads_and_gives_valid_orders_on_its_task(name):
    # A shipped checkpoint (agents/checkpoints/NAME.pt) loads by name and its orders respect the mask of its
    # own task's environment, kinds included (hetero-slow-cost orders one of two kinds per backend).
    from agents.distill import part_sizes

    ckpt = torch.load(f"agents/checkpoints/{name}.pt", map_location="cpu", weights_only=False)
    env = DistillConfig(**{**ckpt["config"], "fraction": 0.02}).shortened().env()
    act = agent_policy(name, env)  # agent:NAME, as evaluate --policy takes it
    offsets = np.cumsum([0, *part_sizes(env)[:-1]])
    episodes = []
    for _ in range(2):  # a whole short episode, twice: valid orders, the same ones under the same seed
        obs, info = env.reset(seed=1000, options={"simulation_seed": 1000})
        orders, done = [], False
        while not done:
            action = act(obs, info["action_mask"])
            assert info["action_mask"][offsets + action].all()
            orders.append(tuple(action))
            obs, _, done, _, info = env.step(action)
        episodes.append(orders)
    assert episodes[0] == episodes[1] and len(episodes[0]) > 5
