"""harness.memory.keep_freed: malloc's setting for training loops on CPU."""

import subprocess
import sys

import torch

from harness.memory import keep_freed

# Faults while allocating a 64 MiB tensor (above glibc's largest mmap threshold) 20 times, after 10.
FAULTS = """
import resource, sys, torch
from harness.memory import keep_freed
print(keep_freed(torch.device("cpu")) if sys.argv[1] == "keep" else False)
for _ in range(10):
    torch.empty(2**24).fill_(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.empty(2**24).fill_(1)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(setting: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", FAULTS, setting], capture_output=True, text=True, check=True)
    made, count = out.stdout.split()
    return made, int(count)


PAGES = 2**26 // 4096   # of one tensor


def test_freed_memory_is_reused_without_faulting_its_pages_in_again():
    made, count = faults("default")
    assert made == "False" and count >= 20 * PAGES   # each a fresh mapping
    made, count = faults("keep")
    assert made == "True" and count < PAGES / 10     # the heap has grown: its pages are reused


def test_the_setting_is_left_alone_on_a_gpu():
    assert keep_freed(torch.device("cuda")) is False
