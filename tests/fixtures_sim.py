"""Fixtures for the simulated Modbus bus (owned by the simulator room)."""
