"""The vocabulary the server, the devices and the harness all speak: the wire protocol, the
scenario config and its file format, sample records, events, the model zoo, batch-latency
profiles, cascade math, the gear-plan format, loop-lag histograms, logging set-up and what every
child process does first.

The bottom floor: it imports nothing of `server`, `emulated_devices` or `testbed`
(tests/unit/test_layering.py holds that).
"""
