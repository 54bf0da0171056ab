"""Simulated Modbus devices: units, an RS-485 line with wire timing, pty/TCP/UDP servers,
device models (Eastron SDM, Growatt MIN) and the site physics that drives them."""

from .bus import SimBus, WireFrame
from .line import SerialLine
from .models import EastronMeter, GrowattMin, growatt_min, sdm72d, sdm120, sdm230, sdm630
from .net import SimServer, serve_rtu_over_tcp, serve_tcp, serve_udp
from .rtu_pty import SimSerialPort, serve_rtu
from .scenario import GROWATT_UNIT, METER_UNIT, seed_site
from .site import Battery, Site, SunCurve
from .unit import HOLDING, INPUT, Reply, SimUnit, UnitCounters

__all__ = [
    "GROWATT_UNIT",
    "HOLDING",
    "INPUT",
    "METER_UNIT",
    "Battery",
    "EastronMeter",
    "GrowattMin",
    "Reply",
    "SerialLine",
    "SimBus",
    "SimSerialPort",
    "SimServer",
    "SimUnit",
    "Site",
    "SunCurve",
    "UnitCounters",
    "WireFrame",
    "growatt_min",
    "sdm72d",
    "sdm120",
    "sdm230",
    "sdm630",
    "seed_site",
    "serve_rtu",
    "serve_rtu_over_tcp",
    "serve_tcp",
    "serve_udp",
]
