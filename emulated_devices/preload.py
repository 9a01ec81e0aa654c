"""Warm-up done once in the forkserver, inherited by every device process it forks.

Creating the first onnxruntime session in a process initialises the runtime's environment
(~40 ms); numpy's random module and the dataset have first-use costs too. Paid once here
instead of in each of 40+ devices, start-up is shorter and the pages are shared.
"""

from __future__ import annotations

import numpy as np

from common.modelzoo import open_session, open_zoo, to_model_input
from emulated_devices.arrivals import arrival_times


def warm_up() -> None:
    zoo = open_zoo()
    data = zoo.dataset("test")
    session = open_session(zoo.model_path(zoo.tiers[next(iter(zoo.tiers))]))
    session.run(None, {session.get_inputs()[0].name: to_model_input(data.x[:1])})
    arrival_times("poisson", 10.0, 1.0, np.random.default_rng(0))


warm_up()
