#!/usr/bin/env python3
"""Create, rename and unlink N empty files in one new directory of a mount; print the rates.

    scripts/md-loop.py MOUNTPOINT [N]      (N: 3000)

A quick metadata check between full fsbench runs (scripts/bench.sh)."""
import os
import sys
import time

mnt = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
d = os.path.join(mnt, f"md-loop.{os.getpid()}")
os.makedirs(d)
rates = []
for step in ("create", "rename", "unlink"):
    t = time.time()
    for i in range(n):
        if step == "create":
            open(f"{d}/f{i}", "w").close()
        elif step == "rename":
            os.rename(f"{d}/f{i}", f"{d}/g{i}")
        else:
            os.unlink(f"{d}/g{i}")
    rates.append(f"{step} {n / (time.time() - t):.0f}/s")
os.rmdir(d)
print(" ".join(rates))
