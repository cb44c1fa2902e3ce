"""`python -m bench.pyspy_top FILE [N]`: top functions of kom's threads in a py-spy profile.

FILE is `py-spy record -f raw --threads` output (collapsed stacks with thread names). Only the
samples of kom's own threads (kom-line-*, kom-dispatch) count; own time is the innermost frame,
cumulative time every function on the stack (once per sample).
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(.*) \((.*?):\d+\)$")
KOM_THREADS = ("kom-line", "kom-dispatch")


def _function(frame: str) -> str:
    m = FRAME.match(frame)
    return f"{m.group(1)} ({m.group(2)})" if m else frame


def top(path: Path, count: int = 25) -> str:
    own: Counter[str] = Counter()
    cumulative: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, samples_text = line.rpartition(" ")
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1]
        if not thread.startswith(KOM_THREADS):
            continue
        samples = int(samples_text)
        total += samples
        threads[thread] += samples
        functions = [_function(f) for f in frames[1:]]
        if functions:
            own[functions[-1]] += samples
        for function in set(functions):
            cumulative[function] += samples
    if not total:
        return "no samples of kom's threads (record with --threads)"
    out = [f"kom thread samples: {total:,} ({', '.join(f'{t} {c:,}' for t, c in threads.items())})"]
    for title, counter in (("own", own), ("cumulative", cumulative)):
        out.append(f"\ntop {count} by {title} time (% of kom-thread samples):")
        out += [f"  {100 * c / total:5.1f}%  {f}" for f, c in counter.most_common(count)]
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python -m bench.pyspy_top FILE [N]")
    print(top(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) == 3 else 25))
