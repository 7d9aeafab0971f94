"""What this CPU can do, answered once: its ISA flags, native bf16, and its fp32 peak.

Every module that asks about the CPU (the inference sessions, the training AMP rule, the
benchmark's roofline) asks here, so they cannot disagree.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CpuInfo", "CpuPeak", "cpu_has_bf16", "cpu_info", "cpu_peak"]

CPUINFO = Path("/proc/cpuinfo")
MAX_FREQ = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")


@dataclass(frozen=True)
class CpuInfo:
    """The first core's entry of /proc/cpuinfo (empty fields where it is not readable).

    Attributes:
        model: Model name.
        vendor: "GenuineIntel", "AuthenticAMD", ... ("" on ARM).
        family: x86 cpu family (26 = AMD Zen 5); 0 when unknown.
        flags: ISA feature flags (x86 "flags", ARM "Features").
        mhz: The clock the kernel reports (often the nominal one inside a VM), or the
            cpufreq maximum where that is higher.
    """

    model: str
    vendor: str
    family: int
    flags: frozenset[str]
    mhz: float


@functools.lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This machine's CPU, read once from /proc/cpuinfo and cpufreq."""
    model, flags, mhz, vendor, family = platform.processor() or "unknown", "", 0.0, "", 0
    try:
        text = CPUINFO.read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and model in ("unknown", "", "x86_64"):
            model = value
        elif key in ("flags", "Features") and not flags:
            flags = value
        elif key == "cpu MHz" and not mhz:
            mhz = float(value)
        elif key == "vendor_id" and not vendor:
            vendor = value
        elif key == "cpu family" and not family and value.isdigit():
            family = int(value)
    try:
        mhz = max(mhz, int(MAX_FREQ.read_text()) / 1000)
    except (OSError, ValueError):
        pass
    return CpuInfo(model=model, vendor=vendor, family=family, flags=frozenset(flags.split()),
                   mhz=mhz)


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Native bf16 dot products: AVX-512 BF16 or AMX on x86, the BF16 extension on ARM.

    Why the ISA flags and not oneDNN's `torch.ops.mkldnn._is_mkldnn_bf16_supported()`:
    oneDNN reports bf16 "supported" on every AVX-512 (BW/VL/DQ) CPU, where it emulates bf16
    with conversions around fp32 arithmetic, slower than fp32 itself (Skylake-X, Cascade Lake,
    Ice Lake). Both users of this answer, bf16 inference sessions and the training AMP rule
    (`amp="auto"`), want bf16 only where it is faster. The flags come from /proc/cpuinfo,
    else (no /proc: macOS, Windows) from torch's CPUID probes.
    """
    flags = cpu_info().flags
    if flags:
        return bool({"avx512_bf16", "amx_bf16", "bf16"} & flags)
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, p, lambda: False)()) for p in probes)


@dataclass
class CpuPeak:
    """Estimated fp32 peak: cores x GHz x FLOPs/cycle."""

    model: str
    cores: int
    ghz: float
    flops_per_cycle: int
    isa: str

    @property
    def gflops(self) -> float:
        return self.cores * self.ghz * self.flops_per_cycle

    def describe(self) -> str:
        return (f"{self.cores} cores x {self.ghz:.2f} GHz x {self.flops_per_cycle} FP32 "
                f"FLOPs/cycle ({self.isa}) = {self.gflops:.0f} GFLOP/s (estimate)")


def cpu_peak(cores: int, ghz: float | None = None, info: CpuInfo | None = None) -> CpuPeak:
    """Estimate the fp32 FMA peak of `cores` cores of this CPU (or of `info`).

    FLOPs/cycle = FMA pipes x fp32 lanes x 2: AVX-512 on Intel server cores and AMD Zen 5
    (cpu family 26) runs two 512-bit FMAs per cycle (64); Zen 4 executes AVX-512 on two
    256-bit pipes (32), as do AVX2 cores (32); SSE-only cores 8. The clock is the one the
    kernel reports (often the nominal clock inside a VM) unless `ghz` is given.
    """
    info = info or cpu_info()
    fl = info.flags
    if "avx512f" in fl and info.vendor == "AuthenticAMD" and info.family >= 26:
        per, isa = 64, "AVX-512, 2 full-width FMA pipes (AMD Zen 5, family 26)"
    elif "avx512f" in fl and info.vendor == "AuthenticAMD":
        per, isa = 32, "AVX-512 on 2x256-bit FMA pipes (AMD Zen 4)"
    elif "avx512f" in fl:
        per, isa = 64, "AVX-512, 2 FMA units"
    elif "avx2" in fl and "fma" in fl:
        per, isa = 32, "AVX2 + FMA, 2 units"
    else:
        per, isa = 8, "SSE"
    return CpuPeak(model=info.model, cores=cores, ghz=ghz or info.mhz / 1000,
                   flops_per_cycle=per, isa=isa)
