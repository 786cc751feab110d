"""What machine a benchmark ran on (shared by bench/run.py and bench/scale_out.py)."""

import os
import platform


def machine():
    """CPU model, cores, memory (GiB) and kernel, as read from /proc."""
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 1024 / 1024)
    return {"cpu_model": model, "cores": os.cpu_count(), "mem_gb": mem, "kernel": platform.release()}
