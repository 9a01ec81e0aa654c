"""The emulated accelerators: a plain L(b), a conventional NPU that pads every batch to a size
it was compiled for, and a fluid-batching NPU with stackable processing elements."""

from __future__ import annotations

import pytest

from cascade_testbed.common.batch_profiles import BatchProfile, on_accelerator, utilisation
from cascade_testbed.common.config import AcceleratorConfig, ScenarioError
from cascade_testbed.common.scenario_file import scenario_from_dict

PLAIN = BatchProfile(6.0, 4.2)


@pytest.mark.parametrize("b,padded", [(1, 8), (5, 8), (8, 8), (9, 32), (32, 32), (33, 32 + 8),
                                      (64, 64), (70, 64 + 8)])
def test_a_conventional_npu_pads_to_the_smallest_compiled_size(b: int, padded: int) -> None:
    npu = on_accelerator(PLAIN, AcceleratorConfig("conventional-npu", (8, 32)))
    passes = -(-b // 32)
    assert npu.target_s(b) == pytest.approx((6.0 * passes + 4.2 * padded) / 1e3)
    assert npu.target_s(b) >= PLAIN.target_s(b)


def test_a_fluid_npu_runs_any_size_and_keeps_a_share_of_the_fixed_cost() -> None:
    fluid = on_accelerator(PLAIN, AcceleratorConfig("fluid-npu", fixed_share=0.5))
    assert fluid == BatchProfile(3.0, 4.2)
    for b in (1, 3, 7, 32):
        assert fluid.target_s(b) < PLAIN.target_s(b)
        assert utilisation(fluid, b) > utilisation(PLAIN, b)
    conventional = on_accelerator(PLAIN, AcceleratorConfig("conventional-npu"))
    assert utilisation(conventional, 1) < utilisation(PLAIN, 1) < utilisation(fluid, 1)
    assert utilisation(conventional, 8) == pytest.approx(utilisation(PLAIN, 8))


def test_plain_is_the_profile_itself_and_a_share_keeps_the_shapes() -> None:
    assert on_accelerator(PLAIN, AcceleratorConfig()) is PLAIN
    stage = on_accelerator(PLAIN, AcceleratorConfig("conventional-npu", (4, 16))).scaled(0.25)
    assert stage.shapes == (4, 16) and stage.target_s(3) == pytest.approx(
        0.25 * (6.0 + 4.2 * 4) / 1e3)


def test_the_scenario_names_its_accelerator_and_bad_ones_are_refused() -> None:
    cfg = scenario_from_dict({"name": "s", "server": {"accelerator": {
        "kind": "conventional-npu", "batch_shapes": [1, 16]}}})
    assert cfg.server.accelerator == AcceleratorConfig("conventional-npu", (1, 16))
    for bad in ({"kind": "gpu"}, {"batch_shapes": []}, {"batch_shapes": [16, 8]},
                {"batch_shapes": [0, 8]}, {"fixed_share": 1.5}):
        with pytest.raises(ScenarioError):
            scenario_from_dict({"name": "s", "server": {"accelerator": bad}})
