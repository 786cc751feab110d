#!/usr/bin/env python3
"""Profiles one Cocoon-rs setup of the harness under fixed-rate load with `perf` (CPU samples of
the `cocoon dev` process only) and prints the top symbols. Uses the release binaries that
scripts/bench builds (line tables on, so symbols resolve).

  bench/profile.py [--setup cocoon|cocoon-no-billing|cocoon-bare] [--rate 300] [--secs 10]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402

SETUPS = {
    "cocoon": ({}, (1_000_000_000, 10_000_000_000)),
    "cocoon-no-billing": ({"COCOON__BILLING__ENABLED": "false"}, (1_000_000_000, 10_000_000_000)),
    "cocoon-bare": ({"COCOON__GATEWAY__INSECURE_DISABLE_AUTH": "true", "COCOON__BILLING__ENABLED": "false",
                     "COCOON__GATEWAY__DEFAULT_LIMITS__REQUESTS_PER_MINUTE": "0",
                     "COCOON__GATEWAY__DEFAULT_LIMITS__TOKENS_PER_MINUTE": "0"}, None),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--setup", default="cocoon", choices=sorted(SETUPS))
    ap.add_argument("--rate", type=int, default=300)
    ap.add_argument("--secs", type=int, default=10)
    ap.add_argument("--top", type=int, default=40)
    a = ap.parse_args()
    tools = run.Tools()
    work = tempfile.mkdtemp(prefix="cocoon-profile-")
    eng, url = run.start_engine(tools, work)
    env, key = SETUPS[a.setup]
    coc = None
    try:
        coc, curl, k = run.start_cocoon(tools, work, a.setup, url, env, key)
        headers = [f"Authorization: Bearer {k}"] if k else []
        run.oha(tools, curl, min(a.rate, 1000), 1, headers)
        data = os.path.join(work, "perf.data")
        perf = subprocess.Popen(["perf", "record", "-F", "1999", "-g", "-p", str(coc.pid), "-o", data, "--",
                                 "sleep", str(a.secs)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        s = run.oha(tools, curl, a.rate, a.secs - 1, headers)
        perf.wait()
        print(f"# {a.setup} at {a.rate} req/s: achieved {s['achieved_rps']} ok/s, latency ms {s['latency_ms']}")
        rep = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "dso,symbol",
                              "--stdio", "-g", "none", "--percent-limit", "0.5"], capture_output=True, text=True)
        lines = [l.rstrip()[:140].rstrip(" -") for l in rep.stdout.splitlines() if l.strip() and not l.startswith("#")]
        print("\n".join(lines[: a.top]))
        rep = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "comm,dso", "--stdio",
                              "-g", "none", "--percent-limit", "1"], capture_output=True, text=True)
        print("# by thread and binary:")
        print("\n".join(l.rstrip()[:100] for l in rep.stdout.splitlines() if l.strip() and not l.startswith("#")))
    finally:
        if coc:
            coc.stop()
        eng.stop()


if __name__ == "__main__":
    main()
