"""Where the device time of a jitted step goes, from a jax.profiler trace (perfetto JSON).

    python benchmarks/profile_summary.py TRACE_DIR [--hlo step.hlo.txt] [--top 40]

Sums the device events (GPU kernels, or the XLA thunks of a CPU run) per HLO op and per kind
(matmul, attention, copy/transpose, the rest), and compares the device-busy time with the traced
wall time: a large gap means launch or host overhead, not slow kernels. With ``--hlo`` (the
compiled step's ``as_text()``) each op is shown with the first line of its HLO, so a fusion name
reads as what it computes.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re

_MATMUL = re.compile(r"gemm|cutlass|cublas|xmma|nvjet|matmul|dot|ynn_fusion", re.I)
_ATTENTION = re.compile(r"fmha|flash|cudnn|sdpa|attn", re.I)
_COPY = re.compile(r"copy|transpose|memcpy|memset|dynamic.update.slice", re.I)


def _load_events(trace_dir: str) -> list[dict]:
    paths = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True))
    if not paths:
        raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir}")
    with gzip.open(paths[-1]) as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def kind_of(kernel: str, op: str) -> str:
    if _ATTENTION.search(kernel) or "custom-call" in op and "fmha" in op:
        return "attention"
    if _MATMUL.search(kernel) or _MATMUL.search(op):
        return "matmul"
    if _COPY.search(kernel) or _COPY.search(op):
        return "copy/transpose"
    return "other (elementwise, reductions)"


def _hlo_lines(path: str | None) -> dict[str, str]:
    """op name -> its defining HLO line (instructions of the entry and nested computations)."""
    if not path:
        return {}
    lines = {}
    with open(path) as f:
        for line in f:
            m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (.*)", line)
            if m:
                lines.setdefault(m.group(1), m.group(2)[:160])
    return lines


def summarize(trace_dir: str, hlo_path: str | None = None, top: int = 40) -> str:
    events = _load_events(trace_dir)
    process = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    device_pids = {pid for pid, name in process.items() if "/device:" in name}
    if not device_pids:  # CPU runs: the XLA thunks on the host's PjRt client threads
        device_pids = set(process)
    kernels = [e for e in events if e.get("ph") == "X" and e.get("pid") in device_pids and "dur" in e
               and (e.get("args") or {}).get("hlo_op")]
    if not kernels:
        return f"no device events with an hlo_op in {trace_dir}"
    start = min(e["ts"] for e in kernels)
    end = max(e["ts"] + e["dur"] for e in kernels)
    # Device-busy time: union of the kernel intervals (streams may overlap).
    busy, cur_s, cur_e = 0.0, None, None
    for s, d in sorted((e["ts"], e["dur"]) for e in kernels):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                busy += cur_e - cur_s
            cur_s, cur_e = s, s + d
        else:
            cur_e = max(cur_e, s + d)
    busy += cur_e - cur_s
    per_op = collections.defaultdict(lambda: [0.0, 0, ""])
    per_kind = collections.Counter()
    for e in kernels:
        op = e["args"]["hlo_op"]
        row = per_op[op]
        row[0] += e["dur"]
        row[1] += 1
        row[2] = row[2] or e["name"]
        per_kind[kind_of(e["name"], op)] += e["dur"]
    total = sum(r[0] for r in per_op.values())
    hlo = _hlo_lines(hlo_path)
    out = [f"trace {trace_dir}: {len(kernels)} device events over {(end - start) / 1e3:.2f} ms wall; "
           f"busy {busy / 1e3:.2f} ms ({busy / (end - start):.1%}); kernel time summed {total / 1e3:.2f} ms"]
    for kind, t in per_kind.most_common():
        out.append(f"  {kind:34s} {t / 1e3:10.2f} ms {t / total:7.1%}")
    out.append(f"\ntop {top} ops by time (ms, calls, share, kernel, HLO):")
    for op, (t, n, kernel) in sorted(per_op.items(), key=lambda kv: -kv[1][0])[:top]:
        out.append(f"{t / 1e3:9.3f} {n:6d} {t / total:6.1%}  {op:28s} {kernel[:60]:60s} {hlo.get(op, '')[:150]}")
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trace_dir")
    p.add_argument("--hlo", default=None)
    p.add_argument("--top", type=int, default=40)
    args = p.parse_args()
    print(summarize(args.trace_dir, args.hlo, args.top))


if __name__ == "__main__":
    main()
