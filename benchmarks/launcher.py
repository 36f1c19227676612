"""``python -m benchmarks.launcher LOG COMMAND...``: run COMMAND and print one JSON line with its
wall seconds, exit status and peak RSS (its own rusage, via wait4); its stdout goes to LOG ("" for
none). Spawned from a benchmark process that holds TensorFlow, a child's peak RSS would start at
the parent's size (Linux counts the forked image before exec): this small process in between makes
the number the command's own."""

import json
import os
import subprocess
import sys
import time

start = time.perf_counter()
log = open(sys.argv[1], "w") if sys.argv[1] else subprocess.DEVNULL
child = subprocess.Popen(sys.argv[2:], stdout=log, stderr=subprocess.DEVNULL)
_, status, usage = os.wait4(child.pid, 0)
print(json.dumps({"wall": time.perf_counter() - start, "status": status, "maxrss_kib": usage.ru_maxrss}))
