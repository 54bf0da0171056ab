"""Simulated SunSpec devices, built from the SunSpec Alliance's model definitions.

Each model below is its list of points in the definitions' order with their SunSpec types
(``name:type[/scale-factor point]``); a point's address is the model's start plus the sizes
of the points before it, so the layout follows the definitions themselves, not any table
of offsets. A ``SunSpecUnit`` places models one after another behind the "SunS" marker
(40000, 50000 or 0) and ends the chain with 0xFFFF (or, like some vendors, not at all).

Values are set in physical units (``set(model, "W", 4200.0)``): the simulator encodes them
with the model's scale-factor point as it currently reads, as the device would. Vendor
behaviour from their documents and the quirks dbus-fronius records:

* Fronius: "null frames" - while its data source times out or it boots, the inverter model
  reads all zeros with St = 7 (``null_frame = "zeros"``) or all 0xFFFF (``"ones"``).
* SMA: the limit's enable flag (123 WMaxLim_Ena) is set on the inverter and refuses writes;
  only the percentage is writable. No end model: reading past the chain is exception 2.
* SolarEdge: a second model 1 for its meter, no end model (zeros follow the chain); the
  meter's power is positive for export.

Physics (deliberately small): ``available_w`` is what the sun offers; the output is that,
capped by an enabled limit (123 or 704, percent of the rating), split over the phases; a
limit with a revert timer returns to its revert values when not renewed in time.
"""

from __future__ import annotations

import math
import struct
import time
from dataclasses import dataclass

from .unit import HOLDING, SimUnit

# -- the SunSpec model definitions (points in order; type sizes below) ----------------------------

_SIZES = {"u16": 1, "s16": 1, "e16": 1, "sf": 1, "n": 1, "pad": 1, "b16": 1, "u32": 2, "s32": 2, "a32": 2,
          "f32": 2, "b32": 2, "u64": 4, "a64": 4}

MODELS: dict[int, str] = {
    1: "ID:u16 L:u16 Mn:str16 Md:str16 Opt:str8 Vr:str8 SN:str16 DA:u16 Pad:pad",
    101: "INV_INT",
    102: "INV_INT",
    103: "INV_INT",
    111: "INV_FLOAT",
    112: "INV_FLOAT",
    113: "INV_FLOAT",
    120: ("ID:u16 L:u16 DERTyp:e16 WRtg:u16/WRtg_SF WRtg_SF:sf VARtg:u16/VARtg_SF VARtg_SF:sf "
          "VArRtgQ1:s16/VArRtg_SF VArRtgQ2:s16/VArRtg_SF VArRtgQ3:s16/VArRtg_SF VArRtgQ4:s16/VArRtg_SF "
          "VArRtg_SF:sf ARtg:u16/ARtg_SF ARtg_SF:sf PFRtgQ1:s16/PFRtg_SF PFRtgQ2:s16/PFRtg_SF "
          "PFRtgQ3:s16/PFRtg_SF PFRtgQ4:s16/PFRtg_SF PFRtg_SF:sf WHRtg:u16/WHRtg_SF WHRtg_SF:sf "
          "AhrRtg:u16/AhrRtg_SF AhrRtg_SF:sf MaxChaRte:u16/MaxChaRte_SF MaxChaRte_SF:sf "
          "MaxDisChaRte:u16/MaxDisChaRte_SF MaxDisChaRte_SF:sf Pad:pad"),
    123: ("ID:u16 L:u16 Conn_WinTms:u16 Conn_RvrtTms:u16 Conn:e16 WMaxLimPct:u16/WMaxLimPct_SF "
          "WMaxLimPct_WinTms:u16 WMaxLimPct_RvrtTms:u16 WMaxLimPct_RmpTms:u16 WMaxLim_Ena:e16 "
          "OutPFSet:s16/OutPFSet_SF OutPFSet_WinTms:u16 OutPFSet_RvrtTms:u16 OutPFSet_RmpTms:u16 "
          "OutPFSet_Ena:e16 VArWMaxPct:s16/VArPct_SF VArMaxPct:s16/VArPct_SF VArAvalPct:s16/VArPct_SF "
          "VArPct_WinTms:u16 VArPct_RvrtTms:u16 VArPct_RmpTms:u16 VArPct_Mod:e16 VArPct_Ena:e16 "
          "WMaxLimPct_SF:sf OutPFSet_SF:sf VArPct_SF:sf"),
    160: "ID:u16 L:u16 DCA_SF:sf DCV_SF:sf DCW_SF:sf DCWH_SF:sf Evt:b32 N:n TmsPer:u16",
    201: "METER_INT",
    202: "METER_INT",
    203: "METER_INT",
    204: "METER_INT",
    211: "METER_FLOAT",
    212: "METER_FLOAT",
    213: "METER_FLOAT",
    214: "METER_FLOAT",
    701: ("ID:u16 L:u16 ACType:e16 St:e16 InvSt:e16 ConnSt:e16 Alrm:b32 DERMode:b32 W:s16/W_SF VA:s16/VA_SF "
          "Var:s16/Var_SF PF:s16/PF_SF A:s16/A_SF LLV:u16/V_SF LNV:u16/V_SF Hz:u32/Hz_SF TotWhInj:u64/TotWh_SF "
          "TotWhAbs:u64/TotWh_SF TotVarhInj:u64/TotVarh_SF TotVarhAbs:u64/TotVarh_SF TmpAmb:s16/Tmp_SF "
          "TmpCab:s16/Tmp_SF TmpSnk:s16/Tmp_SF TmpTrns:s16/Tmp_SF TmpSw:s16/Tmp_SF TmpOt:s16/Tmp_SF "
          + " ".join(f"WL{n}:s16/W_SF VAL{n}:s16/VA_SF VarL{n}:s16/Var_SF PFL{n}:s16/PF_SF AL{n}:s16/A_SF "
                     f"VL{n}L{n % 3 + 1}:u16/V_SF VL{n}:u16/V_SF TotWhInjL{n}:u64/TotWh_SF TotWhAbsL{n}:u64/TotWh_SF "
                     f"TotVarhInjL{n}:u64/TotVarh_SF TotVarhAbsL{n}:u64/TotVarh_SF" for n in (1, 2, 3))
          + " ThrotPct:u16 ThrotSrc:b32 A_SF:sf V_SF:sf Hz_SF:sf W_SF:sf PF_SF:sf VA_SF:sf Var_SF:sf "
          "TotWh_SF:sf TotVarh_SF:sf Tmp_SF:sf MnAlrmInfo:str32"),
    702: ("ID:u16 L:u16 WMaxRtg:u16/W_SF WOvrExtRtg:u16/W_SF WOvrExtRtgPF:u16/PF_SF WUndExtRtg:u16/W_SF "
          "WUndExtRtgPF:u16/PF_SF VAMaxRtg:u16/VA_SF VarMaxInjRtg:u16/Var_SF VarMaxAbsRtg:u16/Var_SF "
          "WChaRteMaxRtg:u16/W_SF WDisChaRteMaxRtg:u16/W_SF VAChaRteMaxRtg:u16/VA_SF VADisChaRteMaxRtg:u16/VA_SF "
          "VNomRtg:u16/V_SF VMaxRtg:u16/V_SF VMinRtg:u16/V_SF AMaxRtg:u16/A_SF PFOvrExtRtg:u16/PF_SF "
          "PFUndExtRtg:u16/PF_SF ReactSusceptRtg:u16/S_SF NorOpCatRtg:e16 AbnOpCatRtg:e16 CtrlModes:b32 "
          "IntIslandCatRtg:b16 WMax:u16/W_SF WMaxOvrExt:u16/W_SF WOvrExtPF:u16/PF_SF WMaxUndExt:u16/W_SF "
          "WUndExtPF:u16/PF_SF VAMax:u16/VA_SF VarMaxInj:u16/Var_SF VarMaxAbs:u16/Var_SF WChaRteMax:u16/W_SF "
          "WDisChaRteMax:u16/W_SF VAChaRteMax:u16/VA_SF VADisChaRteMax:u16/VA_SF VNom:u16/V_SF VMax:u16/V_SF "
          "VMin:u16/V_SF AMax:u16/A_SF PFOvrExt:u16/PF_SF PFUndExt:u16/PF_SF IntIslandCat:b16 W_SF:sf PF_SF:sf "
          "VA_SF:sf Var_SF:sf V_SF:sf A_SF:sf S_SF:sf"),
    704: ("ID:u16 L:u16 PFWInjEna:e16 PFWInjEnaRvrt:e16 PFWInjRvrtTms:u32 PFWInjRvrtRem:u32 PFWAbsEna:e16 "
          "PFWAbsEnaRvrt:e16 PFWAbsRvrtTms:u32 PFWAbsRvrtRem:u32 WMaxLimPctEna:e16 "
          "WMaxLimPct:u16/WMaxLimPct_SF WMaxLimPctRvrt:u16/WMaxLimPct_SF WMaxLimPctEnaRvrt:e16 "
          "WMaxLimPctRvrtTms:u32 WMaxLimPctRvrtRem:u32 WSetEna:e16 WSetMod:e16 WSet:s32/WSet_SF "
          "WSetRvrt:s32/WSet_SF WSetPct:s16/WSetPct_SF WSetPctRvrt:s16/WSetPct_SF WSetEnaRvrt:e16 "
          "WSetRvrtTms:u32 WSetRvrtRem:u32 VarSetEna:e16 VarSetMod:e16 VarSetPri:e16 VarSet:s32/VarSet_SF "
          "VarSetRvrt:s32/VarSet_SF VarSetPct:s16/VarSetPct_SF VarSetPctRvrt:s16/VarSetPct_SF VarSetEnaRvrt:e16 "
          "VarSetRvrtTms:u32 VarSetRvrtRem:u32 WRmp:u16 WRmpRef:e16 VarRmp:u16 AntiIslEna:e16 PF_SF:sf "
          "WMaxLimPct_SF:sf WSet_SF:sf WSetPct_SF:sf VarSet_SF:sf VarSetPct_SF:sf "
          "PFWInj_PF:u16/PF_SF PFWInj_Ext:e16 PFWInjRvrt_PF:u16/PF_SF PFWInjRvrt_Ext:e16 "
          "PFWAbs_PF:u16/PF_SF PFWAbs_Ext:e16 PFWAbsRvrt_PF:u16/PF_SF PFWAbsRvrt_Ext:e16"),
}
_SHARED = {
    "INV_INT": ("ID:u16 L:u16 A:u16/A_SF AphA:u16/A_SF AphB:u16/A_SF AphC:u16/A_SF A_SF:sf PPVphAB:u16/V_SF "
                "PPVphBC:u16/V_SF PPVphCA:u16/V_SF PhVphA:u16/V_SF PhVphB:u16/V_SF PhVphC:u16/V_SF V_SF:sf "
                "W:s16/W_SF W_SF:sf Hz:u16/Hz_SF Hz_SF:sf VA:s16/VA_SF VA_SF:sf VAr:s16/VAr_SF VAr_SF:sf "
                "PF:s16/PF_SF PF_SF:sf WH:a32/WH_SF WH_SF:sf DCA:u16/DCA_SF DCA_SF:sf DCV:u16/DCV_SF DCV_SF:sf "
                "DCW:s16/DCW_SF DCW_SF:sf TmpCab:s16/Tmp_SF TmpSnk:s16/Tmp_SF TmpTrns:s16/Tmp_SF "
                "TmpOt:s16/Tmp_SF Tmp_SF:sf St:e16 StVnd:e16 Evt1:b32 Evt2:b32 EvtVnd1:b32 EvtVnd2:b32 "
                "EvtVnd3:b32 EvtVnd4:b32"),
    "INV_FLOAT": ("ID:u16 L:u16 A:f32 AphA:f32 AphB:f32 AphC:f32 PPVphAB:f32 PPVphBC:f32 PPVphCA:f32 PhVphA:f32 "
                  "PhVphB:f32 PhVphC:f32 W:f32 Hz:f32 VA:f32 VAr:f32 PF:f32 WH:f32 DCA:f32 DCV:f32 DCW:f32 "
                  "TmpCab:f32 TmpSnk:f32 TmpTrns:f32 TmpOt:f32 St:e16 StVnd:e16 Evt1:b32 Evt2:b32 EvtVnd1:b32 "
                  "EvtVnd2:b32 EvtVnd3:b32 EvtVnd4:b32"),
    "METER_INT": ("ID:u16 L:u16 A:s16/A_SF AphA:s16/A_SF AphB:s16/A_SF AphC:s16/A_SF A_SF:sf PhV:s16/V_SF "
                  "PhVphA:s16/V_SF PhVphB:s16/V_SF PhVphC:s16/V_SF PPV:s16/V_SF PhVphAB:s16/V_SF PhVphBC:s16/V_SF "
                  "PhVphCA:s16/V_SF V_SF:sf Hz:s16/Hz_SF Hz_SF:sf W:s16/W_SF WphA:s16/W_SF WphB:s16/W_SF "
                  "WphC:s16/W_SF W_SF:sf VA:s16/VA_SF VAphA:s16/VA_SF VAphB:s16/VA_SF VAphC:s16/VA_SF VA_SF:sf "
                  "VAR:s16/VAR_SF VARphA:s16/VAR_SF VARphB:s16/VAR_SF VARphC:s16/VAR_SF VAR_SF:sf PF:s16/PF_SF "
                  "PFphA:s16/PF_SF PFphB:s16/PF_SF PFphC:s16/PF_SF PF_SF:sf "
                  + " ".join(f"TotWh{d}{p}:a32/TotWh_SF" for d in ("Exp", "Imp") for p in ("", "PhA", "PhB", "PhC"))
                  + " TotWh_SF:sf "
                  + " ".join(f"TotVAh{d}{p}:a32/TotVAh_SF" for d in ("Exp", "Imp") for p in ("", "PhA", "PhB", "PhC"))
                  + " TotVAh_SF:sf "
                  + " ".join(f"TotVArh{q}{p}:a32/TotVArh_SF" for q in ("ImpQ1", "ImpQ2", "ExpQ3", "ExpQ4")
                             for p in ("", "PhA", "PhB", "PhC"))
                  + " TotVArh_SF:sf Evt:b32"),
    "METER_FLOAT": ("ID:u16 L:u16 A:f32 AphA:f32 AphB:f32 AphC:f32 PhV:f32 PhVphA:f32 PhVphB:f32 PhVphC:f32 "
                    "PPV:f32 PPVphAB:f32 PPVphBC:f32 PPVphCA:f32 Hz:f32 W:f32 WphA:f32 WphB:f32 WphC:f32 VA:f32 "
                    "VAphA:f32 VAphB:f32 VAphC:f32 VAR:f32 VARphA:f32 VARphB:f32 VARphC:f32 PF:f32 PFphA:f32 "
                    "PFphB:f32 PFphC:f32 "
                    + " ".join(f"TotWh{d}{p}:f32" for d in ("Exp", "Imp") for p in ("", "PhA", "PhB", "PhC"))
                    + " "
                    + " ".join(f"TotVAh{d}{p}:f32" for d in ("Exp", "Imp") for p in ("", "PhA", "PhB", "PhC"))
                    + " "
                    + " ".join(f"TotVArh{q}{p}:f32" for q in ("ImpQ1", "ImpQ2", "ExpQ3", "ExpQ4")
                               for p in ("", "phA", "phB", "phC"))
                    + " Evt:b32"),
}
#: Model 160's repeating module (20 registers each).
MPPT_MODULE = "ID:u16 IDStr:str8 DCA:u16/DCA_SF DCV:u16/DCV_SF DCW:u16/DCW_SF DCWH:a32/DCWH_SF Tms:u32 Tmp:s16 DCSt:e16 DCEvt:b32"

_NOT_IMPLEMENTED = {"u16": 0xFFFF, "e16": 0xFFFF, "n": 0xFFFF, "b16": 0xFFFF, "s16": 0x8000, "sf": 0x8000,
                    "pad": 0x8000, "u32": 0xFFFFFFFF, "b32": 0xFFFFFFFF, "s32": 0x80000000, "a32": 0, "u64": 2**64 - 1,
                    "a64": 0}


@dataclass(frozen=True, slots=True)
class SimPoint:
    name: str
    type: str
    size: int
    offset: int  # from the model's ID register
    sf: str | None


def parse_layout(text: str, start: int = 0) -> dict[str, SimPoint]:
    out: dict[str, SimPoint] = {}
    offset = start
    for item in text.split():
        name, _, rest = item.partition(":")
        typ, _, sf = rest.partition("/")
        size = int(typ[3:]) if typ.startswith("str") else _SIZES[typ]
        out[name] = SimPoint(name, typ, size, offset, sf or None)
        offset += size
    return out


def layout(model_id: int) -> dict[str, SimPoint]:
    text = MODELS[model_id]
    return parse_layout(_SHARED.get(text, text))


def model_length(model_id: int, modules: int = 0) -> int:
    """L: registers after ID and L (160: plus its modules)."""
    pts = layout(model_id)
    end = max(p.offset + p.size for p in pts.values())
    return end - 2 + 20 * modules


@dataclass
class PlacedModel:
    id: int
    address: int  # of its ID register
    length: int
    points: dict[str, SimPoint]
    modules: int = 0

    def addr(self, point: str, module: int | None = None) -> int:
        if module is not None:
            p = parse_layout(MPPT_MODULE, 0)[point]
            return self.address + 10 + 20 * module + p.offset
        return self.address + self.points[point].offset


class SunSpecUnit(SimUnit):
    """A SunSpec device: marker, model chain, values by point name, limit physics."""

    def __init__(self, address: int, chain: list[int | tuple[int, int]], *, base: int = 40000,
                 end_marker: bool = True, trailing_zeros: bool = False, name: str = "SunSpec device",
                 turnaround: float = 0.010, **kw: object) -> None:
        super().__init__(address, turnaround=turnaround, name=name, **kw)  # type: ignore[arg-type]
        self.base = base
        self.models: list[PlacedModel] = []
        h = self.holding
        h[base], h[base + 1] = 0x5375, 0x6E53
        at = base + 2
        for item in chain:
            mid, modules = item if isinstance(item, tuple) else (item, 0)
            length = model_length(mid, modules)
            pm = PlacedModel(mid, at, length, layout(mid), modules)
            self.models.append(pm)
            for a in range(at, at + 2 + length):
                h[a] = 0
            h[at], h[at + 1] = mid, length
            for p in pm.points.values():
                if p.name not in ("ID", "L") and not p.type.startswith("str"):
                    self._store(pm.address + p.offset, p.type, _NOT_IMPLEMENTED.get(p.type, 0), raw=True)
            at += 2 + length
        if end_marker:
            h[at], h[at + 1] = 0xFFFF, 0
        elif trailing_zeros:
            for a in range(at, at + 8):
                h[a] = 0
        self.end = at
        # -- physics state
        self.available_w = 0.0
        self.voltage = 230.0
        self.frequency = 50.0
        self.null_frame: str | None = None  # "zeros" / "ones": Fronius placeholder frames
        self.load_w = 0.0  # a meter's site: consumption ...
        self.feeds: list[SunSpecUnit] | None = None  # ... and the inverters behind it
        self.export_positive = False  # SolarEdge meters
        self._limit_written_at: dict[int, float] = {}
        self.clock = time.monotonic

    # -- access -----------------------------------------------------------------------------
    def model(self, model_id: int, nth: int = 1) -> PlacedModel:
        found = [m for m in self.models if m.id == model_id]
        return found[nth - 1]

    def _store(self, address: int, typ: str, value: int | float, raw: bool = False) -> None:
        h = self.holding
        if typ == "f32":
            hi, lo = struct.unpack(">HH", struct.pack(">f", float(value)))
            h[address], h[address + 1] = hi, lo
            return
        size = _SIZES[typ]
        v = int(value) & ((1 << (16 * size)) - 1)
        for i in range(size):
            h[address + i] = (v >> (16 * (size - 1 - i))) & 0xFFFF

    def _load(self, address: int, typ: str) -> int | float:
        h = self.holding
        if typ == "f32":
            return struct.unpack(">f", struct.pack(">HH", h[address], h[address + 1]))[0]
        size = _SIZES[typ]
        v = 0
        for i in range(size):
            v = (v << 16) | h[address + i]
        if typ in ("s16", "sf") and v & 0x8000:
            v -= 0x10000
        if typ == "s32" and v & 0x80000000:
            v -= 1 << 32
        return v

    def _point(self, m: PlacedModel, point: str, module: int | None) -> SimPoint:
        return parse_layout(MPPT_MODULE, 0)[point] if module is not None else m.points[point]

    def set_raw(self, m: PlacedModel, point: str, raw: int | float, module: int | None = None) -> None:
        p = self._point(m, point, module)
        if p.type.startswith("str"):
            self.set_text(HOLDING, m.addr(point, module), p.size, str(raw))
        else:
            self._store(m.addr(point, module), p.type, raw)

    def set(self, m: PlacedModel, point: str, value: float | str, module: int | None = None) -> None:
        """Store ``value`` (physical units) encoded with the point's scale factor as it reads now."""
        p = self._point(m, point, module)
        if isinstance(value, str) or p.type == "f32" or p.sf is None:
            self.set_raw(m, point, value, module)
            return
        sf = self._load(m.addr(p.sf), "sf")
        self.set_raw(m, point, round(float(value) / 10.0 ** int(sf)), module)

    def get(self, m: PlacedModel, point: str, module: int | None = None) -> float | None:
        """Physical value of a point as the device holds it (None: not implemented)."""
        p = self._point(m, point, module)
        raw = self._load(m.addr(point, module), p.type)
        nimpl = _NOT_IMPLEMENTED.get(p.type)
        if p.type in ("s16", "sf") and raw == -0x8000 or p.type not in ("s16", "sf") and raw == nimpl:
            return None
        if p.type == "f32" or p.sf is None:
            return float(raw)
        return float(raw) * 10.0 ** int(self._load(m.addr(p.sf), "sf"))

    def set_sf(self, m: PlacedModel, sf_point: str, exponent: int) -> None:
        self._store(m.addr(sf_point), "sf", exponent)

    def common(self, nth: int = 1, *, mn: str, md: str, sn: str, vr: str = "1.0.0", opt: str = "") -> None:
        m = self.model(1, nth)
        for point, value in (("Mn", mn), ("Md", md), ("SN", sn), ("Vr", vr), ("Opt", opt)):
            self.set_raw(m, point, value)
        self.set_raw(m, "DA", self.address)

    # -- reads: null frames and live physics ----------------------------------------------------
    def _read(self, table: str, address: int, count: int) -> list[int] | int:
        self.update()
        got = super()._read(table, address, count)
        if self.null_frame is None or isinstance(got, int):
            return got
        inv = self.inverter_model()
        if inv is None:
            return got
        lo, hi = inv.address + 2, inv.address + 2 + inv.length
        st = inv.addr("St") if "St" in inv.points else None
        out = list(got)
        for i in range(count):
            a = address + i
            if lo <= a < hi:
                if self.null_frame == "ones":
                    out[i] = 0xFFFF
                else:
                    out[i] = 7 if a == st else 0
        return out

    def inverter_model(self) -> PlacedModel | None:
        return next((m for m in self.models if m.id in (101, 102, 103, 111, 112, 113, 701)), None)

    # -- limit physics ---------------------------------------------------------------------------
    def applied_write(self, address: int, values: list[int]) -> None:
        for m in self.models:
            if m.id in (123, 704) and m.address <= address < m.address + 2 + m.length:
                self._limit_written_at[m.id] = self.clock()
        if address == self.EDPC["limit"]:
            self._limit_written_at[address] = self.clock()
        self.update()

    def rated_w(self) -> float:
        for mid, point in ((120, "WRtg"), (702, "WMaxRtg")):
            if any(m.id == mid for m in self.models):
                v = self.get(self.model(mid), point)
                if v is not None:
                    return v
        return 0.0

    def limit_pct(self) -> float | None:
        """The limit in force (percent of the rating), None when none is."""
        now = self.clock()
        if any(m.id == 123 for m in self.models):
            m = self.model(123)
            tms = self.get(m, "WMaxLimPct_RvrtTms") or 0
            at = self._limit_written_at.get(123)
            if self.get(m, "WMaxLim_Ena") == 1 and tms and at is not None and now - at > tms and self.writable(
                    m.addr("WMaxLim_Ena")):
                self.set_raw(m, "WMaxLim_Ena", 0)  # the revert timer ran out
            if self.get(m, "WMaxLim_Ena") == 1:
                return self.get(m, "WMaxLimPct")
        if any(m.id == 704 for m in self.models):
            m = self.model(704)
            tms = self.get(m, "WMaxLimPctRvrtTms") or 0
            at = self._limit_written_at.get(704)
            if self.get(m, "WMaxLimPctEna") == 1 and tms and at is not None and now - at > tms:
                self.set_raw(m, "WMaxLimPctEna", self.get(m, "WMaxLimPctEnaRvrt") or 0)
                rv = self.get(m, "WMaxLimPctRvrt")
                if rv is not None:
                    self.set(m, "WMaxLimPct", rv)
            if self.get(m, "WMaxLimPctEna") == 1:
                return self.get(m, "WMaxLimPct")
        return None

    # -- SolarEdge Enhanced Dynamic Power Control (32-bit values low word first) ---------------
    EDPC = {"enable": 0xF300, "max_w": 0xF304, "timeout": 0xF310, "fallback": 0xF312, "ramp_up": 0xF318,
            "ramp_down": 0xF31A, "limit": 0xF322}

    def add_edpc(self, rated_w: float) -> None:
        """SolarEdge's own limiter (after the register list dbus-fronius' solaredge_limiter
        uses): enable u16, max active power f32, command timeout u32 (s, default 60),
        fallback limit f32 (%, default 100), ramps f32 (%/min, default 5, -1 off), dynamic
        limit f32 (%). Without a new limit within the timeout the fallback applies."""
        e = self.EDPC
        self.define(HOLDING, e["enable"], 0x26)
        self.holding[e["enable"]] = 0
        self.set_f32le(e["max_w"], rated_w)
        self.set_u32le(e["timeout"], 60)
        for key, value in (("fallback", 100.0), ("ramp_up", 5.0), ("ramp_down", 5.0), ("limit", 100.0)):
            self.set_f32le(e[key], value)
        self.allow_write(e["enable"], values=(0, 1))
        for key in ("timeout", "fallback", "ramp_up", "ramp_down", "limit"):
            self.allow_write(e[key], 2)
        self.edpc_rated_w = rated_w

    def set_f32le(self, address: int, value: float) -> None:
        hi, lo = struct.unpack(">HH", struct.pack(">f", float(value)))
        self.holding[address], self.holding[address + 1] = lo, hi

    def get_f32le(self, address: int) -> float:
        return struct.unpack(">f", struct.pack(">HH", self.holding[address + 1], self.holding[address]))[0]

    def set_u32le(self, address: int, value: int) -> None:
        self.holding[address], self.holding[address + 1] = value & 0xFFFF, (value >> 16) & 0xFFFF

    def get_u32le(self, address: int) -> int:
        return self.holding[address] | (self.holding[address + 1] << 16)

    def edpc_limit_pct(self) -> float | None:
        e = self.EDPC
        if e["enable"] not in self.holding or self.holding[e["enable"]] != 1:
            return None
        at = self._limit_written_at.get(e["limit"])
        if at is not None and self.clock() - at > self.get_u32le(e["timeout"]):
            return self.get_f32le(e["fallback"])
        return self.get_f32le(e["limit"])

    def output_w(self) -> float:
        edpc = self.edpc_limit_pct() if hasattr(self, "edpc_rated_w") else None
        if edpc is not None:
            return max(0.0, min(self.available_w, self.edpc_rated_w * edpc / 100.0))
        rated = self.rated_w() or math.inf
        cap = rated
        pct = self.limit_pct()
        if pct is not None:
            cap = rated * pct / 100.0
        return max(0.0, min(self.available_w, cap))

    def update(self) -> None:
        """Recompute the inverter's AC values from ``available_w`` and the limit, and a
        meter's from the site (``load_w`` minus what ``feeds`` produce)."""
        if not getattr(self, "_physics", False):
            return
        meter = next((m for m in self.models if 201 <= m.id <= 214), None)
        if meter is not None and self.feeds is not None:
            grid = self.load_w - sum(f.output_w() for f in self.feeds)
            sign = -1 if self.export_positive else 1
            self.set(meter, "W", sign * round(grid))
            for ph in "ABC":
                self.set(meter, f"Wph{ph}", sign * round(grid / 3))
        inv = self.inverter_model()
        if inv is None:
            return
        w = round(self.output_w())
        phases = self.inverter_phases()
        per = w / phases
        amps = round(per / self.voltage, 2)
        if inv.id == 701:
            self.set(inv, "W", w)
            self.set(inv, "A", amps * phases)
            for n in range(1, phases + 1):
                self.set(inv, f"WL{n}", per)
                self.set(inv, f"AL{n}", amps)
        else:
            self.set(inv, "W", w)
            self.set(inv, "A", amps * phases)
            for n, ph in zip(range(1, phases + 1), "ABC"):
                self.set(inv, f"Aph{ph}", amps)
        self.set(inv, "St" if inv.id != 701 else "InvSt", (4 if w > 0 else 8) if inv.id != 701 else (3 if w > 0 else 7))

    def inverter_phases(self) -> int:
        inv = self.inverter_model()
        if inv is None:
            return 0
        if inv.id == 701:
            return {0: 1, 1: 2, 2: 3}[int(self.get(inv, "ACType") or 0)]
        return {1: 1, 2: 2, 3: 3}[inv.id % 10]

    def start_physics(self) -> None:
        """From now on the inverter's AC values follow ``available_w`` and the limit."""
        self._physics = True
        self.update()


# -- the devices of the tests, each after its vendor's documents ------------------------------------


def _inverter_values(u: SunSpecUnit, inv: PlacedModel, *, phases: int, volts: list[float], hz: float,
                     wh: float, temp: float) -> None:
    ph = "ABC"
    for n in range(phases):
        u.set(inv, f"PhVph{ph[n]}", volts[n])
    u.set(inv, "Hz", hz)
    u.set(inv, "WH", wh)
    u.set(inv, "TmpCab", temp)
    u.voltage = volts[0]


def fronius_like(address: int = 1, *, rated_w: int = 8200, serial: str = "31234567", base: int = 40000) -> SunSpecUnit:
    """Fronius Symo (int+SF): 1, 103, 120, 123, 160 (2 trackers), then its Smart Meter as a
    203 without a model 1 of its own; end model 0xFFFF. Scale factors as Fronius sets them
    (A -2, V -1, W 0, Hz -2, WH 0, WMaxLimPct -2: 10000 = 100 %)."""
    u = SunSpecUnit(address, [1, 103, 120, 123, (160, 2), 203], base=base, name="Fronius-like Symo")
    u.common(mn="Fronius", md="Symo 8.2-3-M", sn=serial, vr="1.12.4-1", opt="3.14.1-2")
    inv, npl, ctl, mppt, meter = u.model(103), u.model(120), u.model(123), u.model(160), u.model(203)
    for sf, e in (("A_SF", -2), ("V_SF", -1), ("W_SF", 0), ("Hz_SF", -2), ("WH_SF", 0), ("Tmp_SF", -1),
                  ("DCW_SF", 0), ("DCA_SF", -2), ("DCV_SF", -1), ("VA_SF", 0), ("VAr_SF", 0), ("PF_SF", -2)):
        u.set_sf(inv, sf, e)
    _inverter_values(u, inv, phases=3, volts=[231.5, 229.8, 232.1], hz=50.02, wh=12345678, temp=41.5)
    u.set(inv, "DCW", 0)
    u.set_sf(npl, "WRtg_SF", 1)
    u.set(npl, "WRtg", rated_w)
    u.set_raw(npl, "DERTyp", 4)
    u.set_sf(ctl, "WMaxLimPct_SF", -2)
    u.set(ctl, "WMaxLimPct", 100)
    u.set_raw(ctl, "WMaxLim_Ena", 0)
    u.set_raw(ctl, "WMaxLimPct_RvrtTms", 0)
    u.set_raw(ctl, "Conn", 1)
    for p in ("WMaxLimPct", "WMaxLimPct_WinTms", "WMaxLimPct_RvrtTms", "WMaxLimPct_RmpTms", "WMaxLim_Ena"):
        u.allow_write(ctl.addr(p))
    for sf, e in (("DCA_SF", -2), ("DCV_SF", -1), ("DCW_SF", 0), ("DCWH_SF", 0)):
        u.set_sf(mppt, sf, e)
    u.set_raw(mppt, "N", 2)
    for k, (v, a, wh) in enumerate(((612.3, 4.21, 4000000), (598.7, 3.87, 3500000))):
        u.set_raw(mppt, "ID", k + 1, module=k)
        u.set_raw(mppt, "IDStr", f"String {k + 1}", module=k)
        u.set(mppt, "DCV", v, module=k)
        u.set(mppt, "DCA", a, module=k)
        u.set(mppt, "DCW", round(v * a), module=k)
        u.set(mppt, "DCWH", wh, module=k)
    for sf, e in (("A_SF", -2), ("V_SF", -1), ("Hz_SF", -2), ("W_SF", 0), ("TotWh_SF", 0), ("VA_SF", 0),
                  ("VAR_SF", 0), ("PF_SF", -2), ("TotVAh_SF", 0), ("TotVArh_SF", 0)):
        u.set_sf(meter, sf, e)
    fronius_meter_values(u, meter)
    return u


#: The grid meter's truth in the tests: import positive (Victron's sign), per phase.
GRID_W = (-850.0, -910.0, -840.0)
GRID_V = (231.4, 229.9, 232.0)
GRID_A = (3.71, 3.98, 3.64)
GRID_IMPORT_WH = (1234000.0, 1100000.0, 1050000.0)
GRID_EXPORT_WH = (2345000.0, 2000000.0, 2100000.0)


def fronius_meter_values(u: SunSpecUnit, meter: PlacedModel, sign: int = 1) -> None:
    """Fronius Smart Meter at the feed-in point: W positive = import from the grid."""
    u.set(meter, "W", sign * sum(GRID_W))
    u.set(meter, "A", sum(GRID_A))
    u.set(meter, "Hz", 50.01)
    u.set(meter, "PhV", sum(GRID_V) / 3)
    u.set(meter, "TotWhImp", sum(GRID_IMPORT_WH))
    u.set(meter, "TotWhExp", sum(GRID_EXPORT_WH))
    for n, ph in enumerate("ABC"):
        u.set(meter, f"Wph{ph}", sign * GRID_W[n])
        u.set(meter, f"Aph{ph}", GRID_A[n])
        u.set(meter, f"PhVph{ph}", GRID_V[n])
        u.set(meter, f"TotWhImpPh{ph}", GRID_IMPORT_WH[n])
        u.set(meter, f"TotWhExpPh{ph}", GRID_EXPORT_WH[n])


def float_device(address: int = 1, *, serial: str = "FL0001") -> SunSpecUnit:
    """A float-mode device: single-phase inverter 111 with its rating, then a 213 meter."""
    u = SunSpecUnit(address, [1, 111, 120, 213], name="float SunSpec")
    u.common(mn="Generic", md="Float 5000", sn=serial)
    inv, npl, meter = u.model(111), u.model(120), u.model(213)
    u.set(inv, "PhVphA", 229.5)
    u.set(inv, "Hz", 49.98)
    u.set(inv, "WH", 7654321.0)
    u.set(inv, "TmpCab", 38.25)
    u.voltage = 229.5
    u.set_sf(npl, "WRtg_SF", 0)
    u.set(npl, "WRtg", 5000)
    u.set(meter, "W", sum(GRID_W))
    u.set(meter, "Hz", 50.0)
    u.set(meter, "TotWhImp", sum(GRID_IMPORT_WH))
    u.set(meter, "TotWhExp", sum(GRID_EXPORT_WH))
    for n, ph in enumerate("ABC"):
        u.set(meter, f"Wph{ph}", GRID_W[n])
        u.set(meter, f"Aph{ph}", GRID_A[n])
        u.set(meter, f"PhVph{ph}", GRID_V[n])
        u.set(meter, f"TotWhImpPh{ph}", GRID_IMPORT_WH[n])
        u.set(meter, f"TotWhExpPh{ph}", GRID_EXPORT_WH[n])
    return u


def der_device(address: int = 1, *, serial: str = "DER70001", rated_w: int = 10000) -> SunSpecUnit:
    """A 700-series inverter: 1, 701 (three phase), 702, 704; marker at 50000."""
    u = SunSpecUnit(address, [1, 701, 702, 704], base=50000, name="IEEE 1547 DER")
    u.common(mn="Generic", md="DER 10k", sn=serial)
    inv, cap, ctl = u.model(701), u.model(702), u.model(704)
    u.set_raw(inv, "ACType", 2)
    for sf, e in (("A_SF", -2), ("V_SF", -1), ("Hz_SF", -3), ("W_SF", 0), ("TotWh_SF", 0), ("Tmp_SF", 0)):
        u.set_sf(inv, sf, e)
    for n, v in zip((1, 2, 3), (230.4, 231.0, 229.6)):
        u.set(inv, f"VL{n}", v)
        u.set(inv, f"TotWhInjL{n}", 1000000 * n)
    u.set(inv, "Hz", 50.012)
    u.set(inv, "TotWhInj", 6000000)
    u.set(inv, "TmpCab", 35)
    u.voltage = 230.4
    u.set_sf(cap, "W_SF", 1)
    u.set(cap, "WMaxRtg", rated_w)
    u.set_sf(ctl, "WMaxLimPct_SF", -1)
    u.set(ctl, "WMaxLimPct", 100)
    u.set_raw(ctl, "WMaxLimPctEna", 0)
    for p in ("WMaxLimPctEna", "WMaxLimPct", "WMaxLimPctRvrt", "WMaxLimPctEnaRvrt"):
        u.allow_write(ctl.addr(p))
    u.allow_write(ctl.addr("WMaxLimPctRvrtTms"), 2)
    return u


def sma_like(address: int = 126, *, serial: str = "3001234567", enabled: bool = True) -> SunSpecUnit:
    """SMA Sunny Tripower's SunSpec profile: 1, 103, 120, 123 and no end model. The
    limit's enable flag is set on the inverter (or not) and refuses writes."""
    u = SunSpecUnit(address, [1, 103, 120, 123], end_marker=False, name="SMA-like STP")
    u.common(mn="SMA", md="STP 10.0-3AV-40", sn=serial)
    inv, npl, ctl = u.model(103), u.model(120), u.model(123)
    for sf, e in (("A_SF", -1), ("V_SF", -1), ("W_SF", 1), ("Hz_SF", -2), ("WH_SF", 0), ("Tmp_SF", -1)):
        u.set_sf(inv, sf, e)
    _inverter_values(u, inv, phases=3, volts=[230.0, 231.0, 232.0], hz=50.0, wh=9999000, temp=30.0)
    u.set_sf(npl, "WRtg_SF", 0)
    u.set(npl, "WRtg", 10000)
    u.set_sf(ctl, "WMaxLimPct_SF", 0)
    u.set(ctl, "WMaxLimPct", 100)
    u.set_raw(ctl, "WMaxLim_Ena", 1 if enabled else 0)
    u.allow_write(ctl.addr("WMaxLimPct"))  # WMaxLim_Ena: not writable (exception 2)
    return u


def solaredge_like(address: int = 1, *, serial: str = "7E123456", meter_serial: str = "M0042",
                   rated_w: float = 8000.0) -> SunSpecUnit:
    """SolarEdge: 1, 103 (int+SF), a second model 1 for its meter, 203, and no end model
    (zeros follow). Its meter reports export as positive power. No model 120/123: the
    rating and the limit are its own power-control registers (``add_edpc``)."""
    u = SunSpecUnit(address, [1, 103, 1, 203], end_marker=False, trailing_zeros=True, name="SolarEdge-like")
    u.common(1, mn="SolarEdge ", md="SE8K-RW0TEBEN4", sn=serial, vr="0004.0018.0028")
    u.common(2, mn="SolarEdge", md="WND-3Y-400-MB", sn=meter_serial, opt="Export+Import")
    inv, meter = u.model(103), u.model(203)
    for sf, e in (("A_SF", -2), ("V_SF", -1), ("W_SF", 0), ("Hz_SF", -2), ("WH_SF", 0), ("Tmp_SF", -2)):
        u.set_sf(inv, sf, e)
    _inverter_values(u, inv, phases=3, volts=[230.1, 230.2, 230.3], hz=49.99, wh=3210000, temp=44.0)
    for sf, e in (("A_SF", -2), ("V_SF", -1), ("Hz_SF", -2), ("W_SF", 0), ("TotWh_SF", 0)):
        u.set_sf(meter, sf, e)
    fronius_meter_values(u, meter, sign=-1)
    u.export_positive = True
    u.add_edpc(rated_w)
    return u


def smart_meter(address: int = 240, *, serial: str = "MTR0001", feeds: list[SunSpecUnit] | None = None,
                load_w: float = 0.0) -> SunSpecUnit:
    """A stand-alone SunSpec grid meter (Fronius Smart Meter behind a data manager: its own
    unit, model 1 and 203). With ``feeds`` its power is ``load_w`` minus their output."""
    u = SunSpecUnit(address, [1, 203], name="SunSpec smart meter")
    u.common(mn="Fronius", md="Smart Meter TS 65A-3", sn=serial)
    meter = u.model(203)
    for sf, e in (("A_SF", -2), ("V_SF", -1), ("Hz_SF", -2), ("W_SF", 0), ("TotWh_SF", 0)):
        u.set_sf(meter, sf, e)
    fronius_meter_values(u, meter)
    u.feeds, u.load_w = feeds, load_w
    if feeds is not None:
        u.start_physics()
    return u


__all__ = ["GRID_A", "GRID_EXPORT_WH", "GRID_IMPORT_WH", "GRID_V", "GRID_W", "MODELS", "SunSpecUnit", "der_device",
           "float_device", "fronius_like", "layout", "model_length", "sma_like", "smart_meter", "solaredge_like"]
