"""What this machine offers the runtime: CPU cores (and, later, GPU devices)."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import cache
from pathlib import Path


@cache
def physical_cores() -> int:
    """The physical performance cores, as llama.cpp's own default counts them: SMT siblings
    count once (Linux ``thread_siblings``), Apple's efficiency cores not at all
    (``hw.perflevel0.physicalcpu``); ``os.cpu_count()`` when neither can be read."""
    if sys.platform == "darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "hw.perflevel0.physicalcpu"], capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip().isdigit():
                return max(1, int(out.stdout))
        except OSError:
            pass
    usable = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    siblings = set()
    for cpu in usable:  # the CPUs this process may run on (a container may allow fewer than exist)
        try:
            siblings.add(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings").read_text().strip())
        except OSError:
            continue
    return len(siblings) or len(usable) or 1
