"""Modbus wire codec shared by the client transports and the simulator.

Pure functions over bytes: no I/O, no state. ``pdu`` builds and checks protocol data units,
``framing`` wraps them for RTU (CRC-16), ASCII (LRC) and TCP/UDP (MBAP).
"""
