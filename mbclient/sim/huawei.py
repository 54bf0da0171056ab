"""Simulated Huawei SUN2000 with a DTSU666-H meter behind it, after Huawei's Modbus interface
definitions (holding registers, 32-bit values high word first):

inverter 30000 model name (15 registers), 30015 SN (10), 30025 PN (10), 30070 model id,
30071 strings, 30072 MPPTs, 30073 rated power (u32 W), 30075 Pmax (u32 W); 32064 DC power
(s32 W), 32069-32071 phase voltages (u16 /10), 32072/74/76 phase currents (s32 /1000),
32080 active power (s32 W), 32084 PF (s16 /1000), 32085 frequency (u16 /100), 32089 status
(0x0200 on-grid), 32090 fault code, 32106 total yield (u32 /100 kWh);
meter 37100 status (1 online), 37101/03/05 voltages (s32 /10), 37107/09/11 currents (s32
/100), 37113 active power (s32 W, positive = export), 37119/37121 import/export (s32 /100
kWh), 37132/34/36 phase powers (s32 W, positive = export).
"""

from __future__ import annotations

from .unit import HOLDING, SimUnit

H = HOLDING


class Sun2000(SimUnit):
    def __init__(self, address: int = 1, *, model: str = "SUN2000-10KTL-M1", serial: str = "HV2150123456",
                 rated_w: int = 10000, meter: bool = True) -> None:
        super().__init__(address, name="Huawei SUN2000", turnaround=0.02)
        self.define(H, 30000, 80)
        self.set_text(H, 30000, 15, model)
        self.set_text(H, 30015, 10, serial)
        self.set_text(H, 30025, 10, "01075123-009")
        self.set_u16(H, 30070, 428)
        self.set_u16(H, 30071, 4)
        self.set_u16(H, 30072, 2)
        self.set_u32(H, 30073, rated_w)
        self.set_u32(H, 30075, rated_w)
        self.define(H, 32000, 120)
        if meter:
            self.define(H, 37100, 40)
            self.set_u16(H, 37100, 1)
        # the truth the tests compare with
        self.volts = (230.5, 231.2, 229.8)
        self.amps = (10.125, 10.0, 10.25)
        self.power_w = 7000
        self.hertz = 50.03
        self.yield_kwh = 12345.67
        self.grid_w = (-1200, -900, -1100)  # import positive (Victron's sign)
        self.grid_v = (230.1, 230.9, 229.7)
        self.grid_a = (5.25, 3.5, 4.75)
        self.import_kwh, self.export_kwh = 2222.22, 3333.33
        self.publish()

    def publish(self) -> None:
        self.set_s32(H, 32064, self.power_w + 150)
        for i in range(3):
            self.set_u16(H, 32069 + i, round(self.volts[i] * 10))
            self.set_s32(H, 32072 + 2 * i, round(self.amps[i] * 1000))
        self.set_s32(H, 32080, self.power_w)
        self.set_s16(H, 32084, 999)
        self.set_u16(H, 32085, round(self.hertz * 100))
        self.set_u16(H, 32089, 0x0200 if self.power_w > 0 else 0xA000)
        self.set_u16(H, 32090, 0)
        self.set_u32(H, 32106, round(self.yield_kwh * 100))
        if 37100 in self.holding:
            for i in range(3):
                self.set_s32(H, 37101 + 2 * i, round(self.grid_v[i] * 10))
                self.set_s32(H, 37107 + 2 * i, round(self.grid_a[i] * 100))
                self.set_s32(H, 37132 + 2 * i, -self.grid_w[i])  # Huawei: export positive
            self.set_s32(H, 37113, -sum(self.grid_w))
            self.set_s32(H, 37119, round(self.import_kwh * 100))
            self.set_s32(H, 37121, round(self.export_kwh * 100))


__all__ = ["Sun2000"]
