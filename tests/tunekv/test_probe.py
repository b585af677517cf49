"""`tunekv probe`: NVML read through a fake library (every field, unsupported ones, no driver)
and the real command on this machine."""

from __future__ import annotations

import json
import types
from dataclasses import dataclass

from tests.tunekv.run_cli import tunekv
from tunekv.hardware.probe import probe


class NVMLError(Exception):
    pass


class NotSupported(NVMLError):
    pass


class NoPermission(NVMLError):
    pass


class LibraryNotFound(NVMLError):
    pass


class DriverNotLoaded(NVMLError):
    pass


@dataclass
class Mem:  # nvmlMemory_t (v1): no reserved field
    total: int
    free: int
    used: int


@dataclass
class MemV2(Mem):
    reserved: int


@dataclass
class Proc:
    pid: int
    usedGpuMemory: int


def fake_nvml(init_error: type | None = None, unsupported: set[str] = frozenset()) -> types.SimpleNamespace:
    """Two H100s joined by 4 NVLinks; names in ``unsupported`` raise NotSupported."""
    buses = ["00000000:18:00.0", "00000000:2A:00.0"]

    def call(name, fn):
        def wrapper(*args):
            if name in unsupported:
                raise NotSupported(name)
            return fn(*args)
        return wrapper

    def init():
        if init_error is not None:
            raise init_error("init failed")

    def nvlink_remote(h, link):
        return types.SimpleNamespace(busId=buses[1 - h].encode())

    def processes(h):
        if h == 1:
            raise NoPermission("processes")
        return [Proc(4242, 3 * 2**30), Proc(4243, 2**64 - 1)]

    ns = types.SimpleNamespace(
        NVMLError=NVMLError, NVMLError_LibraryNotFound=LibraryNotFound, NVMLError_DriverNotLoaded=DriverNotLoaded,
        NVMLError_NoPermission=NoPermission, NVML_TEMPERATURE_GPU=0, NVML_NVLINK_MAX_LINKS=6, nvmlMemory_v2=2,
        nvmlInit=init, nvmlShutdown=lambda: None,
        nvmlSystemGetDriverVersion=call("driver", lambda: "580.159.04"),
        nvmlSystemGetCudaDriverVersion=call("cuda", lambda: 13000),
        nvmlSystemGetNVMLVersion=call("nvml", lambda: b"13.580.159.04"),
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=call("name", lambda h: "NVIDIA H100 80GB HBM3"),
        nvmlDeviceGetUUID=call("uuid", lambda h: f"GPU-{h}"),
        nvmlDeviceGetPciInfo=call("pci", lambda h: types.SimpleNamespace(busId=buses[h])),
        nvmlDeviceGetMemoryInfo=call("memory", lambda h, version=None: MemV2(80 * 2**30, 70 * 2**30, 10 * 2**30,
                                                                              2**29) if version else Mem(
            80 * 2**30, 70 * 2**30, 10 * 2**30)),
        nvmlDeviceGetUtilizationRates=call("util", lambda h: types.SimpleNamespace(gpu=37, memory=12)),
        nvmlDeviceGetTemperature=call("temp", lambda h, sensor: 41),
        nvmlDeviceGetPowerUsage=call("power", lambda h: 123456),
        nvmlDeviceGetEnforcedPowerLimit=call("limit", lambda h: 700000),
        nvmlDeviceGetCudaComputeCapability=call("cc", lambda h: (9, 0)),
        nvmlDeviceGetComputeRunningProcesses=processes,
        nvmlDeviceGetGraphicsRunningProcesses=lambda h: [],
        nvmlSystemGetProcessName=call("procname", lambda pid: f"python{pid}"),
        nvmlDeviceGetNvLinkState=call("nvlink", lambda h, link: 1 if link < 4 else 0),
        nvmlDeviceGetNvLinkRemotePciInfo=nvlink_remote,
        nvmlDeviceGetTopologyCommonAncestor=lambda a, b: 30,
    )
    return ns


def test_probe_reads_every_field_and_the_nvlink_between_two_gpus():
    result = probe(fake_nvml())
    assert result.available and result.driver_version == "580.159.04" and result.cuda_driver_version == "13.0"
    assert result.nvml_version == "13.580.159.04"
    gpu = result.gpus[0]
    assert (gpu.name, gpu.uuid, gpu.compute_capability) == ("NVIDIA H100 80GB HBM3", "GPU-0", "9.0")
    assert gpu.memory_total_bytes == 80 * 2**30 and gpu.memory_reserved_bytes == 2**29
    assert (gpu.utilization_gpu_pct, gpu.temperature_c, gpu.power_draw_w, gpu.power_limit_w) == (37, 41, 123.456, 700)
    assert [(p.pid, p.name, p.used_bytes) for p in gpu.processes] == [(4242, "python4242", 3 * 2**30),
                                                                      (4243, "python4243", None)]
    assert result.gpus[1].processes == []  # NoPermission on the process list: empty, not a crash
    assert [(link.a, link.b, link.kind) for link in result.links] == [(0, 1, "NVLink x4")]
    json.dumps(result.to_json())


def test_unsupported_fields_are_none_and_v1_memory_is_used_when_v2_fails():
    result = probe(fake_nvml(unsupported={"util", "temp", "power", "limit", "cc", "nvlink", "cuda"}))
    gpu = result.gpus[0]
    assert result.available and result.cuda_driver_version is None
    assert (gpu.utilization_gpu_pct, gpu.temperature_c, gpu.power_draw_w, gpu.compute_capability) == (None,) * 4
    assert result.links[0].kind == "PCIe host bridge"  # no NVLink state: the PCIe topology level
    nvml = fake_nvml()
    v1 = nvml.nvmlDeviceGetMemoryInfo
    nvml.nvmlDeviceGetMemoryInfo = lambda h, version=None: v1(h) if version is None else (_ for _ in ()).throw(
        NotSupported("v2"))
    gpu = probe(nvml).gpus[0]
    assert gpu.memory_total_bytes == 80 * 2**30 and gpu.memory_reserved_bytes is None


def test_no_library_or_no_driver_says_why():
    missing = probe(fake_nvml(LibraryNotFound))
    assert not missing.available and "no NVIDIA driver is installed" in missing.reason
    unloaded = probe(fake_nvml(DriverNotLoaded))
    assert not unloaded.available and "not loaded" in unloaded.reason


def test_probe_command_on_this_machine():
    done = tunekv("probe")
    assert done.returncode == 0, done.stderr
    as_json = tunekv("probe", "--json")
    assert as_json.returncode == 0
    result = json.loads(as_json.stdout)
    if not result["available"]:  # the CI machine: no driver, one line saying why, and what happens instead
        assert result["reason"] and "no NVIDIA GPU" in done.stdout and "h100-80gb" in done.stdout
    else:
        assert result["gpus"] and result["gpus"][0]["name"] in done.stdout
