"""Peak memory of a phase: allocator peak on CUDA, sampled resident set size on CPU."""

import threading

import psutil
import torch


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
