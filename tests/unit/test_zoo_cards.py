"""The embedded model zoo's index, cards and files agree (numpy + onnxruntime only, no torch).

scripts/build_zoo.py writes common/zoo/; these checks guard the committed outputs: every model
named has a card and a file with the card's sha256, heavy variants are ordered by cost and keep
the input/output contract, light cards carry a cascade curve per heavy variant, ensembles name
light models of their tier, and the early-exit stages chain and reproduce their card's accuracy.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cascade_testbed.common.modelzoo import (
    EMBEDDED_ZOO,
    Zoo,
    open_session,
    open_zoo,
    to_model_input,
)

ZOO = open_zoo(EMBEDDED_ZOO)
INDEX: dict[str, Any] = ZOO.index
MODELS: list[str] = list(INDEX["models"])
HEAVY_VARIANTS: list[str] = list(INDEX["heavy_variants"])
LIGHTS = [m for m in MODELS if ZOO.card(m)["role"] == "light"]
BATCHES = ["1", "2", "4", "8", "16", "32", "64"]
THRESHOLDS = [round(0.025 * i, 3) for i in range(41)]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _shape(dims: list[Any]) -> list[int | None]:
    """onnxruntime's shape with named (dynamic) axes as None, the cards' convention."""
    return [d if isinstance(d, int) else None for d in dims]


def _run_stages(zoo: Zoo, card: dict[str, Any], x: np.ndarray) -> list[np.ndarray]:
    """Every exit's probs, feeding each stage the previous stage's activation."""
    feed, exits = x, []
    for stage in card["stages"]:
        sess = open_session(zoo.root / stage["file"])
        names = [o["name"] for o in stage["outputs"]]
        outs = dict(zip(names, sess.run(names, {stage["input"]["name"]: feed}), strict=True))
        exits.append(outs["probs"])
        feed = outs[names[0]]
    return exits


def test_index_keeps_defaults_and_names_new_sections() -> None:
    assert INDEX["heavy"] == "heavy-cnn"
    assert INDEX["heavy"] in HEAVY_VARIANTS
    assert set(INDEX["tiers"]) == {"low", "mid", "high"}
    for tier, model in INDEX["tiers"].items():
        assert model in MODELS
        assert ZOO.card(model)["tier"] == tier
    assert set(HEAVY_VARIANTS) <= set(MODELS)
    assert INDEX["early_exit"] not in MODELS  # its stages are listed in its card
    assert len(set(MODELS)) == len(MODELS)


@pytest.mark.parametrize("model", MODELS)
def test_every_model_has_a_card_and_a_file_matching_its_sha256(model: str) -> None:
    card = ZOO.card(model)
    assert card["name"] == model
    path = ZOO.model_path(model)
    assert path.name == card["file"] == f"{model}.onnx"
    assert path.stat().st_size == card["size_bytes"]
    assert _sha256(path) == card["sha256"]
    assert card["input"]["name"] == "input" and card["input"]["shape"] == [None, 64]
    classes = ZOO.label_mod(ZOO.task_of(model)) or 10  # a task's models: its classes
    assert card["output"] == {"name": "probs", "shape": [None, classes]}
    for split in ("val", "test"):
        assert 0.0 < card["accuracy"][split] <= 1.0


def test_the_tasks_relabel_the_digits_and_list_three_models_of_rising_cost() -> None:
    """Each task's models answer its labels (digit mod `label_mod`); their sizes and
    latencies rise together; the digit task is the dataset's own labels."""
    tasks = ZOO.tasks
    assert set(tasks) == {"digit", "parity", "mod3"}
    assert ZOO.canonical_task("") == "digit" and ZOO.label_mod("digit") is None
    assert ZOO.label_mod("parity") == 2 and ZOO.label_mod("mod3") == 3
    for task, spec in tasks.items():
        models = spec["models"]
        assert len(models) == 3 and all(ZOO.task_of(m) == task for m in models)
        cards = [ZOO.card(m) for m in models]
        sizes = [c["size_bytes"] for c in cards]
        lat = [c["latency_ms_p50"]["32"] for c in cards]
        assert sizes == sorted(sizes) and lat == sorted(lat), task
        data = ZOO.dataset("val")
        labels = data.y % spec["label_mod"]
        session = open_session(ZOO.model_path(models[-1]), 1, 1)
        probs = session.run(None, {session.get_inputs()[0].name: to_model_input(data.x)})[0]
        assert (probs.argmax(1) == labels).mean() == pytest.approx(cards[-1]["accuracy"]["val"],
                                                                  abs=1e-3)


def test_committed_files_stay_under_2_mib() -> None:
    sizes = {p.name: p.stat().st_size for p in ZOO.root.iterdir() if p.is_file()}
    assert all(size < 2 * 1024 * 1024 for size in sizes.values()), sizes
    assert sum(sizes.values()) < 8 * 1024 * 1024


def test_heavy_variants_are_ordered_by_batch_32_latency() -> None:
    cards = [ZOO.card(h) for h in HEAVY_VARIANTS]
    assert len(cards) >= 3
    for card in cards:
        assert card["role"] == "heavy"
        assert list(card["latency_ms_p50"]) == BATCHES
    lat32 = [c["latency_ms_p50"]["32"] for c in cards]
    assert lat32 == sorted(lat32) and len(set(lat32)) == len(lat32), lat32


@pytest.mark.parametrize("model", HEAVY_VARIANTS)
def test_heavy_variant_loads_with_its_declared_input_and_output(model: str) -> None:
    card = ZOO.card(model)
    sess = open_session(ZOO.model_path(model))
    (inp,) = sess.get_inputs()
    (out,) = sess.get_outputs()
    assert (inp.name, _shape(inp.shape), inp.type) == ("input", card["input"]["shape"],
                                                       "tensor(float)")
    assert (out.name, _shape(out.shape)) == (card["output"]["name"], card["output"]["shape"])
    x = to_model_input(ZOO.dataset("test").x[:5])
    probs = sess.run(None, {"input": x})[0]
    assert probs.shape == (5, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("model", LIGHTS)
def test_light_card_has_a_curve_for_every_heavy_variant(model: str) -> None:
    card = ZOO.card(model)
    curves = card["threshold_curves_val"]
    assert list(curves) == HEAVY_VARIANTS
    assert card["threshold_curve_val"] == curves[INDEX["heavy"]]
    for heavy, curve in curves.items():
        assert [row["threshold"] for row in curve] == THRESHOLDS
        rates = [row["forward_rate"] for row in curve]
        assert rates == sorted(rates), (heavy, rates)  # monotone in the threshold
        assert all(0.0 <= row["accuracy"] <= 1.0 for row in curve)
        # nothing forwarded: the light model's own accuracy
        assert curve[0]["forward_rate"] == 0.0
        assert curve[0]["accuracy"] == card["accuracy"]["val"]
        # the forward rate depends on the light model only
        assert rates == [row["forward_rate"] for row in card["threshold_curve_val"]]
        # everything forwarded: the heavy model's accuracy
        for row in curve:
            if row["forward_rate"] == 1.0:
                assert row["accuracy"] == ZOO.card(heavy)["accuracy"]["val"]


def test_ensembles_name_light_models_of_their_tier() -> None:
    ensembles = INDEX["ensembles"]
    assert set(ensembles) == set(INDEX["tiers"])
    for tier, members in ensembles.items():
        assert len(members) >= 2 and len(set(members)) == len(members)
        assert members[0] == INDEX["tiers"][tier]
        cards = [ZOO.card(m) for m in members]
        for member, card in zip(members, cards, strict=True):
            assert member in MODELS
            assert card["role"] == "light" and card["tier"] == tier
            assert card["ensemble_member_of"] == tier
        assert len({c["arch"] for c in cards}) == 1  # same architecture ...
        assert len({c["training"]["seed"] for c in cards}) == len(cards)  # ... other seeds
        assert len({c["sha256"] for c in cards}) == len(cards)


def test_early_exit_stages_chain_and_load_as_declared() -> None:
    card = ZOO.card(INDEX["early_exit"])
    assert card["role"] == "early_exit"
    stages = card["stages"]
    assert len(stages) == 3
    assert stages[0]["input"] == {"name": "input", "shape": [None, 64]}
    assert [o["name"] for o in stages[-1]["outputs"]] == ["probs"]
    for prev, nxt in itertools.pairwise(stages):
        assert prev["outputs"][0]["shape"] == nxt["input"]["shape"]
        assert [o["name"] for o in prev["outputs"]][1:] == ["probs"]
    for stage in stages:
        path = ZOO.root / stage["file"]
        assert path.stat().st_size == stage["size_bytes"]
        assert _sha256(path) == stage["sha256"]
        assert list(stage["latency_ms_p50"]) == BATCHES
        assert stage["latency_ms_p50"]["32"] > 0.2
        sess = open_session(path)
        (inp,) = sess.get_inputs()
        assert {"name": inp.name, "shape": _shape(inp.shape)} == stage["input"]
        assert [{"name": o.name, "shape": _shape(o.shape)}
                for o in sess.get_outputs()] == stage["outputs"]


def test_early_exit_runs_on_eight_samples() -> None:
    card = ZOO.card(INDEX["early_exit"])
    exits = _run_stages(ZOO, card, to_model_input(ZOO.dataset("test").x[:8]))
    assert len(exits) == len(card["stages"])
    for probs in exits:
        assert probs.shape == (8, 10)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_early_exit_accuracy_matches_a_recomputation_on_the_test_split() -> None:
    card = ZOO.card(INDEX["early_exit"])
    data = ZOO.dataset("test")
    exits = _run_stages(ZOO, card, to_model_input(data.x))
    accs = [float((p.argmax(axis=1) == data.y).mean()) for p in exits]
    assert accs[-1] == pytest.approx(card["exit_accuracy"]["test"][-1], abs=0.005)
    assert accs == pytest.approx(card["exit_accuracy"]["test"], abs=0.005)
    assert card["accuracy"]["test"] == card["exit_accuracy"]["test"][-1]


def test_early_exit_curves() -> None:
    card = ZOO.card(INDEX["early_exit"])
    curve = card["exit_curves_val"]
    assert [row["threshold"] for row in curve] == [round(0.05 * i, 3) for i in range(21)]
    for row in curve:
        assert len(row["exit_rates"]) == len(card["stages"])
        assert sum(row["exit_rates"]) == pytest.approx(1.0, abs=1e-3)
    assert curve[0]["exit_rates"][0] == 1.0  # threshold 0: everything leaves at stage 1
    assert curve[0]["accuracy"] == card["exit_accuracy"]["val"][0]
    last_stage = [row["exit_rates"][-1] for row in curve]
    assert last_stage == sorted(last_stage)
