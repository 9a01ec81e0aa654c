"""The light model's in-place input gives exactly `to_model_input`'s answer."""

from __future__ import annotations

import numpy as np

from cascade_testbed.common.modelzoo import open_zoo, to_model_input
from cascade_testbed.emulated_devices.light_model import LightModel, light_stage


def test_in_place_input_matches_to_model_input() -> None:
    zoo = open_zoo()
    x = zoo.dataset("test").x[:20]
    for name in zoo.tiers.values():
        model = LightModel(zoo, name)
        session = model._session
        for pixels in x:
            expected = session.run(None, {session.get_inputs()[0].name:
                                          to_model_input(pixels[None])})[0][0]
            assert np.array_equal(model.predict(pixels), expected)
    ensemble = light_stage(zoo, tuple(zoo.tiers.values()))
    shares = ensemble.predict(x[0])
    assert np.isclose(shares.sum(), 1.0)


def test_preloaded_sessions_are_shared_and_answer_the_same() -> None:
    from cascade_testbed.emulated_devices import light_model

    zoo = open_zoo()
    name = next(iter(zoo.tiers.values()))
    own = LightModel(zoo, name)
    saved = dict(light_model._PRELOADED)
    try:
        light_model.preload(zoo)
        assert set(light_model._PRELOADED) >= {str(zoo.model_path(n)) for n in zoo.tiers.values()}
        a, b = LightModel(zoo, name), LightModel(zoo, name)
        assert a._session is b._session is light_model._PRELOADED[str(zoo.model_path(name))]
        for pixels in zoo.dataset("test").x[:5]:
            assert np.array_equal(a.predict(pixels), own.predict(pixels))
    finally:
        light_model._PRELOADED.clear()
        light_model._PRELOADED.update(saved)
