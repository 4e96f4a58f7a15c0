"""Peak memory of a phase: allocator peak on CUDA, sampled resident set size on CPU; and the CPU
allocator's setting for training loops."""

import ctypes
import platform
import threading

import psutil
import torch


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4   # glibc's mallopt parameters (malloc.h)


def keep_freed(device: torch.device) -> bool:
    """On CPU under glibc, let malloc keep freed memory for reuse rather than return it to the
    system: by default every tensor above its mmap threshold (grown to at most 32 MiB) is a fresh
    mapping, whose pages fault in and are zeroed again each step, 60,000 faults a step on the `cpu`
    preset (benchmarks/throughput.py). The process then holds its peak until it ends, which a
    trial process may. Whether the setting was made."""
    if device.type != "cpu" or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


class PeakMemory:
    """`with PeakMemory(device) as peak: ...` then `peak.mb`: the phase's peak in MiB."""

    def __init__(self, device: torch.device, interval: float = 0.002):
        self.device, self.interval, self.mb = device, interval, 0.0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._process = psutil.Process()
            self._peak = self._process.memory_info().rss
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, self._process.memory_info().rss)

    def now(self) -> float:
        """Memory held right now in MiB: reserved by the allocator on CUDA, resident set on CPU."""
        if self.device.type == "cuda":
            return torch.cuda.memory_reserved(self.device) / 2**20
        return self._process.memory_info().rss / 2**20

    def so_far(self) -> float:
        """The peak in MiB since entering, read while the phase runs."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return self._peak / 2**20

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.mb = max(self._peak, self._process.memory_info().rss) / 2**20
        return False
