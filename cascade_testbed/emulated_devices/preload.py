"""Warm-up done once in the forkserver, inherited by every device process it forks.

Creating the first onnxruntime session in a process initialises the runtime's environment
(~40 ms), and each light model's session ~20 ms more; numpy's random module and the dataset
have first-use costs too. Paid once here instead of in each of 40 to 1,000 devices, start-up
is shorter and the pages are shared.
"""

from __future__ import annotations

import numpy as np

from cascade_testbed.common.modelzoo import open_zoo
from cascade_testbed.emulated_devices.arrivals import arrival_times
from cascade_testbed.emulated_devices.light_model import preload


def warm_up() -> None:
    zoo = open_zoo()
    zoo.dataset("test")
    preload(zoo)  # the embedded zoo's light sessions, which the devices then share
    arrival_times("poisson", 10.0, 1.0, np.random.default_rng(0))


warm_up()
