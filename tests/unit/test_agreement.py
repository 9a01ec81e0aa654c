"""Cascade-of-ensembles arithmetic: votes, the agreement rule and theta calibration."""

from __future__ import annotations

import numpy as np
import pytest

from cascade_testbed.common.cascade_math import (
    agreement_forwards,
    calibrate_theta,
    cascade_curve,
    forwards,
    vote,
    vote_shares,
)
from cascade_testbed.emulated_devices.forwarding import agreement_rule, confidence_rule


def one_hot(classes: list[int], n_classes: int = 4, conf: float = 0.7) -> np.ndarray:
    """[k, 1, C] member outputs voting for `classes`."""
    out = np.full((len(classes), 1, n_classes), (1 - conf) / (n_classes - 1))
    for m, c in enumerate(classes):
        out[m, 0, c] = conf
    return out


@pytest.mark.parametrize("votes,pred,agreement", [
    ([2, 2, 2], 2, 1.0), ([1, 3, 3], 3, 2 / 3), ([0, 1, 2], None, 1 / 3), ([1, 1], 1, 1.0),
])
def test_vote_majority_and_agreement(votes: list[int], pred: int | None,
                                     agreement: float) -> None:
    v = vote(one_hot(votes))
    assert v.agreement[0] == pytest.approx(agreement)
    if pred is not None:
        assert v.pred[0] == pred


def test_ties_go_to_the_more_confident_class_whatever_its_index() -> None:
    probs = one_hot([3, 0], conf=0.6)
    probs[0, 0, 3] = 0.9  # the member voting 3 is surer
    assert vote(probs).pred[0] == 3
    probs = one_hot([3, 0], conf=0.6)
    probs[1, 0, 0] = 0.9
    assert vote(probs).pred[0] == 0


def test_vote_shares_carry_the_agreement_in_their_max() -> None:
    shares = vote_shares(one_hot([1, 3, 3]))[0]
    assert shares.argmax() == 3 and shares.max() == pytest.approx(2 / 3, abs=1e-5)


@pytest.mark.parametrize("votes,theta,forward", [
    ([2, 2, 2], 1.0, False), ([1, 2, 2], 1.0, True), ([1, 2, 2], 0.6667, False),
    ([1, 2, 2], 2 / 3, False), ([0, 1, 2], 0.6667, True), ([0, 1, 2], 0.0, False),
])
def test_agreement_rule_on_the_device(votes: list[int], theta: float, forward: bool) -> None:
    assert agreement_rule(vote_shares(one_hot(votes))[0], theta) is forward


def test_threshold_one_forwards_even_a_certain_sample() -> None:
    certain = np.array([1.0, 0.0, 0.0])
    assert confidence_rule(certain, 1.0) and not confidence_rule(certain, 0.99)
    assert bool(np.all(forwards(np.array([1.0, 0.3]), 1.0)))


def test_calibration_takes_the_cheapest_theta_within_tolerance() -> None:
    # 3 members; 60% unanimous (always right), 30% 2-of-3 (right 90%), 10% split (right 30%).
    agreement = np.array([1.0] * 60 + [2 / 3] * 30 + [1 / 3] * 10)
    ens_ok = np.array([True] * 60 + [True] * 27 + [False] * 3 + [True] * 3 + [False] * 7)
    heavy_ok = np.ones(100, dtype=bool)
    assert calibrate_theta(agreement, ens_ok, heavy_ok, 3, tolerance=0.0) == 1.0
    assert calibrate_theta(agreement, ens_ok, heavy_ok, 3, tolerance=0.05) == pytest.approx(2 / 3)
    assert calibrate_theta(agreement, ens_ok, heavy_ok, 3, tolerance=0.2) == pytest.approx(1 / 3)
    assert not np.any(agreement_forwards(agreement, 1 / 3))


def test_cascade_curve_end_points() -> None:
    conf = np.array([0.2, 0.5, 0.9, 1.0])
    light_ok = np.array([False, True, True, True])
    heavy_ok = np.array([True, True, False, True])
    fwd, acc = cascade_curve(conf, light_ok, heavy_ok, np.array([0.0, 0.6, 1.0]))
    assert list(fwd) == [0.0, 0.5, 1.0]
    assert list(acc) == [0.75, 1.0, 0.75]


def test_server_ensemble_tier_answers_agreements_and_escalates_the_rest() -> None:
    from cascade_testbed.common.batch_profiles import BatchProfile
    from cascade_testbed.common.modelzoo import open_zoo, to_model_input
    from cascade_testbed.server.heavy_model import AgreementTier, HeavyModel

    zoo = open_zoo()
    lite, base, xl = (HeavyModel(zoo, n) for n in ("heavy-cnn-lite", "heavy-cnn", "heavy-cnn-xl"))
    profiles: dict[str, BatchProfile | None] = {
        "heavy-cnn-lite": BatchProfile(1, 1), "heavy-cnn": BatchProfile(2, 2),
        "heavy-cnn-xl": BatchProfile(4, 4)}
    tier = AgreementTier([lite, base], xl, 1.0, profiles)
    x = to_model_input(zoo.dataset("val").x[:256])
    out = tier.run(x)
    agree = lite.infer(x).argmax(1) == base.infer(x).argmax(1)
    assert out.models is not None
    assert [m == xl.name for m in out.models] == list(~agree)
    assert 0 < (~agree).sum() < len(x)
    assert (out.probs.argmax(1)[agree] == lite.infer(x).argmax(1)[agree]).all()
    assert (out.probs.argmax(1)[~agree] == xl.infer(x[~agree]).argmax(1)).all()
    e = int((~agree).sum())
    assert out.target_s == pytest.approx((1 + 256 + 2 + 2 * 256 + 4 + 4 * e) / 1e3)
    assert tier.profile == BatchProfile(7, 7)  # capacity is planned for the worst case


def test_server_confidence_cascade_answers_what_its_first_model_is_sure_of() -> None:
    from cascade_testbed.common.batch_profiles import BatchProfile
    from cascade_testbed.common.gear_plan import CASCADE_NAME, cascade_name
    from cascade_testbed.common.modelzoo import open_zoo, to_model_input
    from cascade_testbed.server.heavy_model import ConfidenceTier, HeavyModel

    zoo = open_zoo()
    lite, xl = HeavyModel(zoo, "heavy-cnn-lite"), HeavyModel(zoo, "heavy-cnn-xl")
    profiles: dict[str, BatchProfile | None] = {"heavy-cnn-lite": BatchProfile(1, 1),
                                                "heavy-cnn-xl": BatchProfile(4, 4)}
    tier = ConfidenceTier(lite, xl, 0.9, profiles)
    assert tier.name == "heavy-cnn-lite>heavy-cnn-xl@0.9" == cascade_name(lite.name, xl.name,
                                                                         0.9)
    assert CASCADE_NAME.fullmatch(tier.name) is not None
    x = to_model_input(zoo.dataset("val").x[:256])
    out = tier.run(x)
    sure = lite.infer(x).max(1) >= 0.9
    assert out.models is not None and [m == xl.name for m in out.models] == list(~sure)
    assert 0 < (~sure).sum() < len(x)
    assert (out.probs.argmax(1)[sure] == lite.infer(x).argmax(1)[sure]).all()
    assert (out.probs.argmax(1)[~sure] == xl.infer(x[~sure]).argmax(1)).all()
    e = int((~sure).sum())
    assert out.target_s == pytest.approx((1 + 256 + 4 + 4 * e) / 1e3)
    assert tier.profile == BatchProfile(5, 5)
    for bad in ("a>b", "a>b@1.5", "../a>b@0.5", "a>b@0.5x"):
        assert CASCADE_NAME.fullmatch(bad) is None
