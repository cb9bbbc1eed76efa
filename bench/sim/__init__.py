"""Simulation parts of ``sled bench paper``: draft traces, trace replay, the device fleet.

Pure modules (no I/O): :mod:`bench.sim.trace` (trace records, drafting policy, oracle
traces) and :mod:`bench.sim.replay` (one simulated device's schedule). The rest wire
them to MQTT, the verifier process and the models.
"""
