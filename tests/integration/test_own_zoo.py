"""A zoo built by `testbed zoo init` from copies of the embedded zoo's ONNX files and a float32
copy of its data runs like the embedded zoo: real server, real device processes, same seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cascade_testbed.common.modelzoo import EMBEDDED_ZOO
from cascade_testbed.common.scenario_file import load_scenario
from cascade_testbed.common.zoo_checks import to_model_input
from cascade_testbed.testbed.orchestrator import run_scenario
from cascade_testbed.testbed.zoo_init import build_zoo

SCENARIO = """name = "own-zoo"
duration_s = 3.0
seed = 7
{zoo}
[devices]
count = 3
rate_hz = 15.0
[policy]
name = "static"
"""


@pytest.mark.slow
def test_a_zoo_of_copies_and_float32_data_runs_with_the_embedded_accuracy(
        tmp_path: Path) -> None:
    with np.load(EMBEDDED_ZOO / "digits-noisy.npz") as d:
        np.savez(tmp_path / "features.npz", **{k: to_model_input(d[k]) if k.startswith("x")
                                               else d[k] for k in d.files})
    build_zoo(tmp_path / "zoo", [f"{t}={EMBEDDED_ZOO / f'light-{t}.onnx'}"
                                 for t in ("low", "mid", "high")],
              [str(EMBEDDED_ZOO / "heavy-cnn.onnx")], tmp_path / "features.npz", reps=3)
    summaries = {}
    for name, zoo in (("embedded", ""), ("own", 'zoo = "zoo"')):
        path = tmp_path / f"{name}.toml"
        path.write_text(SCENARIO.format(zoo=zoo))
        cfg = load_scenario(path)
        summaries[name] = run_scenario(cfg, tmp_path / f"run-{name}").summary
    embedded, own = summaries["embedded"], summaries["own"]
    assert list(load_scenario(tmp_path / "own.toml").tiers) == ["low", "mid", "high"]
    for s in (embedded, own):
        assert s["run"]["problems"] == [], s["run"]["problems"]
        assert s["samples"]["generated"] > 80
    # The server took the float32 forwards (no refusals) and answered them.
    assert own["refusals"]["by_reason"] == {} and own["samples"]["heavy"] > 0
    assert not own["samples"]["causes"].get("error")
    assert abs(own["accuracy"] - embedded["accuracy"]) <= 0.03
    assert abs(own["forward_rate"] - embedded["forward_rate"]) <= 0.03
