"""How long core.design.budget.count takes per call, for each preset: the Design page calls it on every move.

    .venv/bin/python -m bench.count_speed

Prints the median and 95th percentile over 2,000 calls per preset (and for the largest design the
spec allows), in microseconds.
"""
import json
import platform
import statistics
import time


from core.design.budget import count
from core.design.presets import PRESETS, preset_spec
from core.design.spec import ArchSpec

CALLS = 2000
LARGEST = ArchSpec.from_dict({"stages": [{"blocks": 16, "channels": 1024, "stride": 1}] * 6, "se_ratio": 16})

rows = []
for name, spec in [(n, preset_spec(n)) for n in PRESETS] + [("largest allowed: 6 x 16 blocks, SE", LARGEST)]:
    times = []
    for _ in range(CALLS):
        start = time.perf_counter()
        count(spec)
        times.append(time.perf_counter() - start)
    times.sort()
    rows.append({"preset": name, "blocks": sum(s.blocks for s in spec.stages),
                 "median_us": round(statistics.median(times) * 1e6, 1),
                 "p95_us": round(times[int(0.95 * CALLS)] * 1e6, 1)})
print(json.dumps({"machine": platform.processor() or platform.machine(), "python": platform.python_version(),
                  "calls_per_preset": CALLS, "results": rows}, indent=2))
