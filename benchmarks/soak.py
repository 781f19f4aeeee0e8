"""``make soak``: a bounded soak of ``audiotune serve`` on loopback, with its figures printed.

300 requests from 32 concurrent clients against the micro AF3 (built offline into a temporary
folder), one in five malformed; prints the request count, the statuses (overall and per kind of
malformation), the good requests' p50/p95 latency and the server's RSS (start, first-third and
last-third peaks, end). Exits 1 if any promise broke: a good request not answered 200, a bad one
not answered its 4xx, any 5xx, or RSS growth after warm-up over the tolerance.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    from audiotune.models.tiny import build_tiny
    from soak_harness import SoakSettings, run_soak  # beside this file

    defaults = SoakSettings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=defaults.requests)
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency)
    parser.add_argument("--model", default=None, help="A checkpoint folder (default: a fresh micro AF3).")
    args = parser.parse_args()
    settings = SoakSettings(requests=args.requests, concurrency=args.concurrency)
    with tempfile.TemporaryDirectory(prefix="audiotune-soak-model-") as scratch:
        model = args.model or build_tiny("af3", Path(scratch) / "micro-af3", seed=0, preset="micro")
        report = run_soak(model, settings)
    s = report.summary()
    print(f"soak: {s['requests']} requests ({s['good']} good, {s['malformed']} malformed) from "
          f"{s['concurrency']} clients in {s['wall_s']} s ({s['requests_per_s']} req/s)")
    print("statuses: " + ", ".join(f"{k}: {v}" for k, v in s["statuses"].items()))
    for kind, statuses in s["by_kind"].items():
        print(f"  {kind:24s} " + ", ".join(f"{k}: {v}" for k, v in statuses.items()))
    print(f"latency of good requests: p50 {s['latency_ms_good']['p50']:.0f} ms, "
          f"p95 {s['latency_ms_good']['p95']:.0f} ms")
    rss = s["rss_mb"]
    print(f"server RSS (MB): start {rss['start']}, peak {rss['peak']}, middle-third median {rss['middle_third_median']}, "
          f"last-third median {rss['last_third_median']}, end {rss['end']}; growth after warm-up {rss['growth_after_warmup']} "
          f"(tolerance {rss['tolerance']:g})")
    for problem in s["problems"]:
        print(f"PROBLEM: {problem}")
    print("soak: " + ("passed" if not s["problems"] else "FAILED"))
    return 1 if s["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
