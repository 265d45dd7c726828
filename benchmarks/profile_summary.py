"""Where the device time of a jitted step goes, from a jax.profiler trace (perfetto JSON).

    python benchmarks/profile_summary.py TRACE_DIR [--hlo step.hlo.txt] [--top 40]

Sums the device events (GPU kernels, or the XLA thunks of a CPU run) per kernel and per kind
(matmul, attention, copy/transpose, the rest), compares the device-busy time with the traced
wall time (a large gap means launch or host overhead, not slow kernels) and lists the XLA
runtime's host events (e.g. command_buffer::update, the re-recording of a CUDA graph). With
``--hlo`` (the compiled step's ``as_text()``) each fusion kernel is shown with its result shape
and the jax op it came from.
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
_ATTENTION = re.compile(r"fmha|flash|sdpa|attn", re.I)  # not "cudnn": convolutions run there too
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
    """op name -> its defining HLO line; names are also keyed with '.' -> '_' (GPU kernel names)."""
    if not path:
        return {}
    lines = {}
    with open(path) as f:
        for line in f:
            m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (.*)", line)
            if m:
                lines.setdefault(m.group(1), m.group(2))
                lines.setdefault(m.group(1).replace(".", "_"), m.group(2))
    return lines


def _describe(hlo_line: str) -> str:
    """'bf16[96,197,768] <- jit(train_step)/.../mul': the result shape and the op's source name."""
    if not hlo_line:
        return ""
    meta = re.search(r'op_name="([^"]+)"', hlo_line)
    tuple_shape = hlo_line.startswith("(") and ") " in hlo_line
    shape = hlo_line[: hlo_line.index(") ") + 1] if tuple_shape else hlo_line.split(" ")[0]
    return f"{shape[:60]} <- {meta.group(1)[-80:] if meta else ''}"


def summarize(trace_dir: str, hlo_path: str | None = None, top: int = 40) -> str:
    events = _load_events(trace_dir)
    process = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    device_pids = {pid for pid, name in process.items() if "/device:" in name}
    host_pids = set(process) - device_pids
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
    # Kernels inside CUDA graphs all carry their command buffer as hlo_op; the kernel name (an
    # HLO fusion name with '_' for '.', or a library kernel) says what ran.
    per_kernel = collections.defaultdict(lambda: [0.0, 0])
    per_kind = collections.Counter()
    for e in kernels:
        row = per_kernel[e["name"]]
        row[0] += e["dur"]
        row[1] += 1
        per_kind[kind_of(e["name"], e["args"]["hlo_op"])] += e["dur"]
    total = sum(r[0] for r in per_kernel.values())
    hlo = _hlo_lines(hlo_path)
    out = [f"trace {trace_dir}: {len(kernels)} device events over {(end - start) / 1e3:.2f} ms wall; "
           f"busy {busy / 1e3:.2f} ms ({busy / (end - start):.1%}); kernel time summed {total / 1e3:.2f} ms"]
    for kind, t in per_kind.most_common():
        out.append(f"  {kind:34s} {t / 1e3:10.2f} ms {t / total:7.1%}")
    host = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("pid") in host_pids and not e["name"].startswith("$"):
            host[e["name"][:60]] += e.get("dur", 0)
    if host:
        out.append("\nhost (XLA runtime) events by total time, ms (nested events overlap):")
        out += [f"{t / 1e3:9.2f}  {name}" for name, t in host.most_common(12)]
    out.append(f"\ntop {top} kernels by time (ms, calls, share, kernel, HLO result <- source op):")
    for name, (t, n) in sorted(per_kernel.items(), key=lambda kv: -kv[1][0])[:top]:
        out.append(f"{t / 1e3:9.3f} {n:6d} {t / total:6.1%}  {name[:48]:48s} {_describe(hlo.get(name, ''))}")
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
