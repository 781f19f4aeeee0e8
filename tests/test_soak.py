"""A bounded soak of the real server on loopback: every good request answered, every bad one a 4xx, memory flat.

The same logic as ``make soak`` (``benchmarks/soak_harness.py``): the server runs as ``audiotune serve`` in its own
process (key from a file), 32 concurrent clients send mixed requests, one in five malformed in one of twelve ways.
RSS: the server's median RSS while the last third of the requests finish may exceed the middle third's (after
the first third's warm-up) by at most max(50 MB, 10 %). Bounded: 240 requests (``make soak`` sends 300) and a 240 s limit.
"""

from __future__ import annotations

import pytest

from benchmarks.soak_harness import SoakSettings, run_soak

pytestmark = pytest.mark.slow


def test_soak_mixed_requests_from_32_clients(micro_af3, tmp_path):
    settings = SoakSettings(requests=240, concurrency=32, bad_every=5, time_limit_s=240, rss_tolerance_mb=50)
    report = run_soak(micro_af3, settings, workdir=tmp_path)
    assert not report.timed_out and len(report.outcomes) == 240
    assert len(report.good) == 192 and len(report.bad) == 48
    assert {o.kind for o in report.bad} >= {"bad_base64", "missing_audio", "audio_too_long", "max_tokens_wrong_type",
                                            "garbage_audio", "broken_json", "wrong_key", "body_too_large",
                                            "chunked_too_large"}
    assert [o for o in report.good if o.status != 200] == []
    assert [o for o in report.bad if not (400 <= o.status < 500 and o.status == o.expected)] == []
    assert not any(o.status >= 500 or o.status == 0 for o in report.outcomes)
    assert report.rss_middle_third_mb and report.rss_last_third_mb, "RSS was not sampled"
    assert report.rss_growth_mb < max(50, 0.1 * report.rss_middle_third_mb), report.summary()["rss_mb"]
    assert report.problems() == []
    assert "Traceback" not in report.server_log_tail
