import re

import numpy as np
import pytest

from hermes_env.cli import main
from hermes_env.pdgraph.library import TEMPLATE_NAMES
from tests.conftest import ROOT


def test_templates_command_analyses_every_application(capsys):
    assert main(["templates"]) == 0
    out = capsys.readouterr().out
    for name in TEMPLATE_NAMES:
        row = next(line for line in out.splitlines() if line.startswith(name + " "))
        mean, p50, p95, p99, gittins = map(float, row.split()[2:7])
        assert 0 < p50 <= p95 <= p99 and mean > 0 and gittins > 0


def test_templates_command_reports_a_bad_cost_file(tmp_path, capsys):
    bad = tmp_path / "cost.yaml"
    bad.write_text("backends:\n  llm:llama3-8b: {overhead: 0.01, prefill_per_token: 1e-4}\n")
    assert main(["templates", "--cost", str(bad)]) == 2
    assert "cost.backends.llm:llama3-8b.decode_per_token: is missing" in capsys.readouterr().err


def test_readme_examples_run_from_any_directory(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)  # names, not paths relative to the repository
    spaces = []
    for code in blocks:
        namespace = {}
        exec(compile(code, "README.md", "exec"), namespace)
        spaces.append(namespace)
    namespace = next(ns for ns in spaces if "model" in ns)
    model, p = namespace["model"], namespace["p"]
    assert model.next_use(p, "tool:python-sandbox").probability == pytest.approx(1.0, abs=1e-9)
    assert np.isfinite(model.gittins_index(p))
