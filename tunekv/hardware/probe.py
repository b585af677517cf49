"""`tunekv probe`: the local GPUs through NVML (nvidia-ml-py, imported as pynvml).

No library or no driver is a normal outcome (a CPU box, a laptop): the result says why and
tunekv plans against a GPU preset instead. Any single field a GPU does not support, or that
this user may not read, is None (shown as n/a); it never stops the probe."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class GpuProcess:
    pid: int
    name: str | None
    used_bytes: int | None


@dataclass
class GpuInfo:
    index: int
    name: str | None
    uuid: str | None
    pci_bus_id: str | None
    memory_total_bytes: int | None
    memory_free_bytes: int | None
    memory_used_bytes: int | None
    memory_reserved_bytes: int | None     # driver-reserved (v2 memory struct only)
    utilization_gpu_pct: int | None
    utilization_memory_pct: int | None
    temperature_c: int | None
    power_draw_w: float | None
    power_limit_w: float | None
    compute_capability: str | None
    processes: list[GpuProcess] = field(default_factory=list)


@dataclass
class GpuLink:
    a: int
    b: int
    kind: str          # "NVLink xN" or a PCIe topology level
    nvlink_count: int


@dataclass
class ProbeResult:
    available: bool
    reason: str | None                      # why there are no GPUs, when there are none
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    nvml_version: str | None = None
    gpus: list[GpuInfo] = field(default_factory=list)
    links: list[GpuLink] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


_TOPOLOGY = {0: "same board", 10: "PCIe switch (single)", 20: "PCIe switches (multiple)",
             30: "PCIe host bridge", 40: "NUMA node (CPU)", 50: "system (across CPUs)"}


def probe(nvml: Any = None) -> ProbeResult:
    """Read every GPU NVML sees. ``nvml`` replaces the pynvml module (tests)."""
    if nvml is None:
        try:
            import pynvml
        except ImportError:
            return ProbeResult(False, "nvidia-ml-py (pynvml) is not installed")
        nvml = pynvml
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        return ProbeResult(False, _init_reason(nvml, exc))
    try:
        return _probe(nvml)
    finally:
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError:
            pass


def memory_used(nvml: Any = None) -> list[int] | None:
    """Each GPU's used memory in bytes (NVML), or None where NVML cannot say (no driver, a CPU box)."""
    if nvml is None:
        try:
            import pynvml
        except ImportError:
            return None
        nvml = pynvml
    try:
        nvml.nvmlInit()
    except nvml.NVMLError:
        return None
    try:
        count = nvml.nvmlDeviceGetCount()
        return [int(nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(i)).used) for i in range(count)]
    except nvml.NVMLError:
        return None
    finally:
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError:
            pass


def _init_reason(nvml: Any, exc: Exception) -> str:
    if isinstance(exc, getattr(nvml, "NVMLError_LibraryNotFound", ())):
        return "the NVIDIA driver library (libnvidia-ml.so) was not found: no NVIDIA driver is installed"
    if isinstance(exc, getattr(nvml, "NVMLError_DriverNotLoaded", ())):
        return "the NVIDIA driver is installed but not loaded (no GPU, or the kernel module failed to load)"
    if isinstance(exc, getattr(nvml, "NVMLError_NoPermission", ())):
        return "this user may not access the NVIDIA driver (NVML: no permission)"
    return f"NVML could not start: {exc}"


def _probe(nvml: Any) -> ProbeResult:
    def get(fn: Callable, *args: Any) -> Any:
        try:
            value = fn(*args)
        except nvml.NVMLError:  # NotSupported, NoPermission, Unknown...: this field is n/a
            return None
        return value.decode() if isinstance(value, bytes) else value

    result = ProbeResult(True, None, get(nvml.nvmlSystemGetDriverVersion),
                         _cuda_version(get(nvml.nvmlSystemGetCudaDriverVersion)), get(nvml.nvmlSystemGetNVMLVersion))
    count = get(nvml.nvmlDeviceGetCount) or 0
    handles = []
    for i in range(count):
        handle = get(nvml.nvmlDeviceGetHandleByIndex, i)
        if handle is None:
            continue
        handles.append((i, handle))
        result.gpus.append(_gpu(nvml, get, i, handle))
    if not result.gpus:
        result.available = False
        result.reason = "the NVIDIA driver is loaded but reports no GPUs"
    result.links = _links(nvml, get, handles, result.gpus)
    return result


def _cuda_version(raw: int | None) -> str | None:
    return None if raw is None else f"{raw // 1000}.{raw % 1000 // 10}"


def _gpu(nvml: Any, get: Callable, index: int, h: Any) -> GpuInfo:
    mem = get(nvml.nvmlDeviceGetMemoryInfo, h, nvml.nvmlMemory_v2) if hasattr(nvml, "nvmlMemory_v2") else None
    if mem is None:  # an older driver or library: the v1 struct, without the reserved field
        mem = get(nvml.nvmlDeviceGetMemoryInfo, h)
    reserved = getattr(mem, "reserved", None)
    util = get(nvml.nvmlDeviceGetUtilizationRates, h)
    cc = get(nvml.nvmlDeviceGetCudaComputeCapability, h)
    power = get(nvml.nvmlDeviceGetPowerUsage, h)
    limit = get(nvml.nvmlDeviceGetEnforcedPowerLimit, h)
    pci = get(nvml.nvmlDeviceGetPciInfo, h)
    bus = getattr(pci, "busId", None) if pci is not None else None
    return GpuInfo(
        index=index, name=get(nvml.nvmlDeviceGetName, h), uuid=get(nvml.nvmlDeviceGetUUID, h),
        pci_bus_id=bus.decode() if isinstance(bus, bytes) else bus,
        memory_total_bytes=getattr(mem, "total", None), memory_free_bytes=getattr(mem, "free", None),
        memory_used_bytes=getattr(mem, "used", None), memory_reserved_bytes=reserved,
        utilization_gpu_pct=getattr(util, "gpu", None), utilization_memory_pct=getattr(util, "memory", None),
        temperature_c=get(nvml.nvmlDeviceGetTemperature, h, nvml.NVML_TEMPERATURE_GPU),
        power_draw_w=None if power is None else power / 1000, power_limit_w=None if limit is None else limit / 1000,
        compute_capability=None if cc is None else f"{cc[0]}.{cc[1]}",
        processes=_processes(nvml, get, h))


def _processes(nvml: Any, get: Callable, h: Any) -> list[GpuProcess]:
    procs = (get(nvml.nvmlDeviceGetComputeRunningProcesses, h) or []) + (
        get(nvml.nvmlDeviceGetGraphicsRunningProcesses, h) or [])
    out: dict[int, GpuProcess] = {}
    for p in procs:
        used = getattr(p, "usedGpuMemory", None)
        if used is not None and used >= 2**63:  # NVML's "not available" sentinel
            used = None
        out[p.pid] = GpuProcess(p.pid, get(nvml.nvmlSystemGetProcessName, p.pid), used)
    return list(out.values())


def _links(nvml: Any, get: Callable, handles: list, gpus: list[GpuInfo]) -> list[GpuLink]:
    """NVLink between each pair (counting active links whose far end is the other GPU), else
    the closest PCIe topology level they share."""
    bus_of = {g.index: (g.pci_bus_id or "").lower() for g in gpus}
    max_links = getattr(nvml, "NVML_NVLINK_MAX_LINKS", 18)
    nvlinks: dict[tuple[int, int], int] = {}
    for i, h in handles:
        for link in range(max_links):
            if get(nvml.nvmlDeviceGetNvLinkState, h, link) != 1:
                continue
            remote = get(nvml.nvmlDeviceGetNvLinkRemotePciInfo, h, link)
            remote_bus = getattr(remote, "busId", b"") if remote is not None else b""
            remote_bus = (remote_bus.decode() if isinstance(remote_bus, bytes) else remote_bus).lower()
            for j, bus in bus_of.items():
                if j != i and bus and bus == remote_bus:
                    nvlinks[(i, j)] = nvlinks.get((i, j), 0) + 1
    out = []
    for x, (i, hi) in enumerate(handles):
        for j, hj in handles[x + 1:]:
            n = max(nvlinks.get((i, j), 0), nvlinks.get((j, i), 0))
            if n:
                out.append(GpuLink(i, j, f"NVLink x{n}", n))
            else:
                level = get(nvml.nvmlDeviceGetTopologyCommonAncestor, hi, hj)
                out.append(GpuLink(i, j, _TOPOLOGY.get(level, "n/a") if level is not None else "n/a", 0))
    return out
