"""The project's benchmark (issue 8, bars in docs/benchmark.md): run by scripts/bench.sh.

Drives real processes on the local RabbitMQ and Garage: the vendor emulator
(`liveness-worker emulator`, its own process), one or more `liveness-worker
run` replicas built in release mode, and the Python baseline
(bench/python_worker.py). Only the worker processes are measured: CPU time is
utime + stime from /proc/<pid>/stat, peak memory is VmHWM from
/proc/<pid>/status. Jobs are published with `liveness-worker enqueue`, whose
CPU is not counted either. Every run has its own broker prefix, S3 key
prefix and job ids, and deletes its queues afterwards.

Scenarios (see docs/benchmark.md):
  throughput  128 in flight, emulator latency 300 ms, 200 KB images: jobs/s
              between 10% and 90% of the results, against the Little's-law
              bound 128 / 0.3 s;
  cpu         zero emulator latency, 200 KB and 3 MB images: worker CPU per job;
  rss         3 MB images, 16/64/256 in flight; 64 again with 1 000 and
              1 000 000 jobs queued (the run stops after a few hundred results);
  drain       a 200 KB backlog, 300 ms latency, 32 in flight per replica,
              drained by one and by three replicas;
  traffic     vendor traffic control (docs/traffic.md), three replicas x 64 in
              flight sharing a Redis, the emulator admitting 50 requests/s:
              6 000 jobs with the limit configured (throughput against the
              limit, 429 share), the same with the limit unknown to the worker
              (adaptive concurrency; throughput after the first 30 s), a
              daily budget of 1 000 with 3 000 jobs (submissions, parked, dead
              letters; then the budget raised and the rest drained), and 3 000
              face jobs failing over to Didit once Argos's key is revoked
              halfway. Written to traffic.md and traffic.json only (the other
              figures are kept).
The throughput and cpu scenarios run the Rust worker with the results store
(as in production), without it (the same work as the baseline) and the Python
worker, alternating, `--rounds` times.

Writes results.json, results.md and chart.png into --out and prints the table.
`python bench/bench.py --self-check` checks the pure parts offline.
"""

import argparse
import datetime
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
import urllib.request
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import python_worker  # noqa: E402

KB, MB = 1000, 1000 * 1000


# ---------------------------------------------------------------- pure parts

def parse_proc_stat(text, clk_tck):
    """CPU seconds (user + system) from the text of /proc/<pid>/stat. The
    command name (field 2) may hold spaces and parentheses: fields are
    counted after its last ')'."""
    rest = text[text.rindex(")") + 2:].split()
    # rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(rest[11]) + int(rest[12])) / clk_tck


def parse_vm_hwm(text):
    """Peak resident set size in bytes from the text of /proc/<pid>/status."""
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            value, unit = line.split()[1:3]
            assert unit == "kB", unit
            return int(value) * 1024
    raise ValueError("no VmHWM line")


def littles_bound(in_flight, latency_s):
    """Jobs per second a worker holding `in_flight` jobs, each taking
    `latency_s`, cannot exceed."""
    return in_flight / latency_s


def cpu_bar_s(image_bytes):
    """The CPU bar (docs/benchmark.md): at most 100 µs plus 1.5 ns per image byte."""
    return 100e-6 + 1.5e-9 * image_bytes


def rss_bar_bytes(in_flight, image_bytes):
    """The memory bar (docs/benchmark.md): at most 40 MB plus 1.5 × in flight × image size."""
    return 40 * MB + 1.5 * in_flight * image_bytes


def time_at(samples, count):
    """When `count` results were reached, interpolated from (time, count)
    samples in time order; None if never."""
    prev = None
    for t, c in samples:
        if c >= count:
            if prev is None or c == prev[1]:
                return t
            t0, c0 = prev
            return t0 + (t - t0) * (count - c0) / (c - c0)
        prev = (t, c)
    return None


def window_rate(samples, total, lo=0.1, hi=0.9):
    """Steady-state jobs/s between `lo` and `hi` of `total` results, so the
    ramp-up and the tail do not count."""
    a, b = lo * total, hi * total
    ta, tb = time_at(samples, a), time_at(samples, b)
    if ta is None or tb is None or tb <= ta:
        return None
    return (b - a) / (tb - ta)


def parse_s3_metrics(text):
    """{"requests": {op: n}, "written_bytes": {op: n}} from the worker's
    /metrics text (liveness_s3_requests_total, liveness_s3_written_bytes_total)."""
    out = {"requests": {}, "written_bytes": {}}
    for line in text.splitlines():
        m = re.match(r'liveness_s3_(requests|written_bytes)_total\{op="(\w+)"\}\s+([\d.e+]+)', line)
        if m:
            kind = "requests" if m.group(1) == "requests" else "written_bytes"
            out[kind][m.group(2)] = int(float(m.group(3)))
    return out


def parse_callgrind_total(text):
    """Instructions executed (Ir) by the whole process, from a callgrind
    output file (its `summary:` or `totals:` line)."""
    m = re.findall(r"^(?:summary|totals):\s+(\d+)", text, re.M)
    if not m:
        raise ValueError("no summary or totals line in the callgrind output")
    return max(int(x) for x in m)


def callgrind_self_costs(text):
    """{function: instructions executed in it (self cost)} from a callgrind
    output file (one event, Ir; names possibly compressed as `(id) name`).
    The cost line after a `calls=` line is the call's inclusive cost and
    belongs to the callee, not to the caller's self cost."""
    names, costs = {}, {}
    current, skip = None, False

    def name(spec):
        m = re.match(r"\((\d+)\)(?:\s+(.*))?$", spec)
        if not m:
            return spec
        if m.group(2) is not None:
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), spec)

    for line in text.splitlines():
        if line.startswith("fn="):
            current = name(line[3:])
        elif line.startswith("cfn="):
            name(line[4:])
        elif line.startswith("calls="):
            skip = True
        elif line and (line[0].isdigit() or line[0] in "+-*"):
            if skip:
                skip = False
                continue
            parts = line.split()
            if len(parts) >= 2 and current is not None:
                costs[current] = costs.get(current, 0) + int(parts[-1])
    return costs


# The work done per image byte: SHA-256 compression, copies and fills, base64.
# Under valgrind the CPU's SHA extensions are hidden (SHA-256 runs in
# software, which natively it does not), and how many times a body is copied
# depends on how it arrived (one chunk or several): a count that is large,
# and the part of the count that varies from run to run.
BYTE_WORK = re.compile(r"^(sha2::sha256::(compress256|soft::|x86::)|__mem(cpy|move|set)|"
                       r"base64_simd::)|sha256_block_data_order")


def split_byte_work(costs):
    """(per-byte work, everything else) instructions of a process."""
    bulk = sum(v for k, v in costs.items() if BYTE_WORK.search(k))
    return bulk, sum(costs.values()) - bulk


def per_job_instructions(runs):
    """(per job, fixed) from callgrind runs [(jobs, Ir)] of the same worker
    with different job counts: the least-squares line through them, so what
    every run pays once (start-up, connecting, the drain) is the intercept
    and not counted per job."""
    if len({j for j, _ in runs}) < 2:
        raise ValueError("need runs with at least two different job counts")
    n = len(runs)
    mj = sum(j for j, _ in runs) / n
    mi = sum(i for _, i in runs) / n
    slope = (sum((j - mj) * (i - mi) for j, i in runs)
             / sum((j - mj) ** 2 for j, _ in runs))
    return slope, mi - slope * mj


def check_instructions(measured, committed):
    """Compares instructions per job with the committed figures
    (bench/instructions.json): [(key, measured, committed, limit, ok)] for
    every committed key; a key not measured fails."""
    rows = []
    tol = committed["tolerance"]
    for key, ref in sorted(committed["per_job"].items()):
        got = measured.get(key)
        limit = ref * (1 + tol)
        rows.append((key, got, ref, limit, got is not None and got <= limit))
    return rows


def png(seed, min_bytes):
    """A valid RGB PNG of about `min_bytes` whose pixels are noise from
    `seed` (stored, not compressed, so its size is what was asked)."""
    width = 256
    row = 1 + width * 3
    height = max(16, min_bytes // row)
    rnd = random.Random(seed)
    raw = b"".join(b"\x00" + rnd.randbytes(width * 3) for _ in range(height))

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(raw, 0)) + chunk(b"IEND", b""))


def percentiles(xs):
    """p50, p99 and mean of a list of numbers."""
    xs = sorted(xs)
    if not xs:
        return None
    pick = lambda q: xs[min(len(xs) - 1, round((len(xs) - 1) * q))]  # noqa: E731
    return {"p50": pick(0.5), "p99": pick(0.99), "mean": sum(xs) / len(xs)}


def fmt_bytes(n):
    return f"{n / MB:.0f} MB" if n >= 10 * MB else f"{n / MB:.1f} MB"


def fmt_us(s):
    return f"{s * 1e6:,.0f} µs"


def verdict(ok):
    return "met" if ok else "**not met**"


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


KINDS = ("rust_store", "rust_nostore", "python")
# Why each S3 request a job makes is there (docs/benchmark.md#s3-requests-per-job).
S3_REASONS = {
    "image_get": "the job's image (GetObject): the bytes the vendor checks",
    "outcome_get": "pay-once lookup of outcomes/<job_id>.json (GetObject, 404 for a new job), "
                   "after the claim and before any vendor call; the claim cannot answer it "
                   "(Redis keeps no record of outcomes and may restart empty)",
    "outcome_put": "the outcome, stored before the result is published (PutObject, "
                   "If-None-Match: *), with the delivery's vendor attempts folded in: the "
                   "audit trail of a job that got a verdict costs no request of its own",
    "attempts_put": "the audit record of a delivery that called the vendor without an outcome "
                    "(ladder, dead letter); none on the way to a verdict",
    "pending_get": "Argos callback mode: the pending record, read by a callback or the wait sweep",
    "pending_put": "Argos callback mode: the pending record, before the submission",
    "pending_delete": "Argos callback mode: the pending record, once settled",
    "other": "start-up (the results bucket checked once per process)",
}
KIND_LABELS = {"rust_store": "Rust (store on)", "rust_nostore": "Rust (no store)",
               "python": "Python (no store)"}


def trio(rows, f, key):
    """One cell per kind (Rust store on, Rust no store, Python): `f` of the
    median of `key` over that kind's runs, "–" for a kind not measured."""
    return [f(median([x.get(key) for x in rows[k]])) if rows[k] else "–" for k in KINDS]


def side_by_side_rows(r):
    """The rows of the side-by-side table, [(measure, [three cells])]; a
    row nothing was measured for is left out."""
    t = r["throughput"]
    bound = t["bound"]
    rows = []
    ratio_f = (lambda v: "–" if v is None else f"{v:.2f} ({v * bound:.0f} jobs/s)")
    rows.append(("throughput / bound (128 in flight, 300 ms)", trio(t, ratio_f, "ratio")))
    ms_f = (lambda v: "–" if v is None else f"{v:.0f} ms")
    for part in ("fetch", "vendor", "total"):
        for q in ("p50", "p99"):
            cells = []
            for k in KINDS:
                xs = [x.get("timings_ms", {}).get(part, {}) for x in t[k]]
                cells.append(ms_f(median([x.get(q) for x in xs if x])) if t[k] else "–")
            rows.append((f"timings_ms.{part} {q} in that run", cells))
    rows.append(("mean timings_ms.total in that run", [
        ms_f(median([x.get("timings_ms", {}).get("total", {}).get("mean") for x in t[k]]))
        if t[k] else "–" for k in KINDS]))
    rows.append(("peak RSS in that run",
                 trio(t, lambda v: "–" if v is None else fmt_bytes(v), "peak_rss")))
    for size_key in ("200KB", "3MB"):
        c = r["cpu"][size_key]
        rows.append((f"CPU per job, {size_key} (0 ms)",
                     trio(c, lambda v: "–" if v is None else fmt_us(v), "cpu_per_job")))
        rows.append((f"peak RSS, {size_key} run (32 in flight)",
                     trio(c, lambda v: "–" if v is None else fmt_bytes(v), "peak_rss")))
    return [(name, cells) for name, cells in rows if any(c != "–" for c in cells)]


def s3_section(r):
    """The S3 requests (and bytes written) per job of the Rust worker, by
    reason, from its own counters in the 200 KB CPU runs (the medians)."""
    c = r["cpu"]["200KB"]
    kinds = [k for k in ("rust_store", "rust_nostore")
             if any(x.get("s3_per_job") for x in c[k])]
    if not kinds:
        return []
    per = {k: {} for k in kinds}
    for k in kinds:
        runs = [x["s3_per_job"] for x in c[k] if x.get("s3_per_job")]
        for part in ("requests", "written_bytes"):
            ops = {op for x in runs for op in x.get(part, {})}
            per[k][part] = {op: median([x.get(part, {}).get(op, 0) for x in runs]) for op in ops}
    ops = [op for op in S3_REASONS if any(per[k]["requests"].get(op) for k in kinds)]
    out = ["", "## S3 requests per job", "",
           "Counted by the worker itself (`liveness_s3_requests_total{op}`, "
           "`liveness_s3_written_bytes_total{op}`) in the 200 KB CPU runs, divided by the "
           "jobs: every request a job makes and why. The Python baseline makes one, the "
           "image GET.", "",
           "| request | " + " | ".join(KIND_LABELS[k] for k in kinds) + " | why |",
           "|---" * (len(kinds) + 2) + "|"]
    for op in ops:
        out.append(f"| `{op}` | " + " | ".join(f"{per[k]['requests'].get(op, 0):.2f}" for k in kinds)
                   + f" | {S3_REASONS[op]} |")
    out.append("| **total** | " + " | ".join(
        f"**{sum(per[k]['requests'].values()):.2f}**" for k in kinds) + " | |")
    out.append("| bytes written per job | " + " | ".join(
        f"{sum(per[k]['written_bytes'].values()):,.0f}" for k in kinds)
        + " | the outcome record (the published result, the image digests, the attempts) |")
    return out


def instructions_section(r):
    """Instructions per job (callgrind) beside the CPU time per job."""
    ins = r.get("instructions") or {}
    rows = []
    for size_key in ("200KB", "3MB"):
        for k in ("rust_store", "rust_nostore"):
            x = (ins.get(k) or {}).get(size_key)
            if not x:
                continue
            cpu = median([y.get("cpu_per_job") for y in r["cpu"][size_key][k]])
            committed = ins.get("committed") or {}
            c_total = committed.get(f"{k}/{size_key}")
            c_other = committed.get(f"{k}/{size_key}/outside-byte-work")
            rows.append(f"| {size_label(size_key)}, {KIND_LABELS[k]} | {x['per_job'] / 1e6:.2f} M | "
                        f"{x['per_job_outside_byte_work'] / 1e6:.2f} M | {x['fixed'] / 1e6:.0f} M | "
                        + ("–" if cpu is None else fmt_us(cpu)) + " | "
                        + ("–" if not c_total else
                           f"{c_total / 1e6:.2f} M / {(c_other or 0) / 1e6:.2f} M") + " |")
    if not rows:
        return []
    return ["", "## Instructions per job (callgrind)", "",
            "Instructions the Rust worker process executes per job (all threads), counted by "
            "valgrind's callgrind at 0 ms emulator latency against the real services: a count, "
            "not a time, so other load on the machine does not change it. Each run is a whole "
            "worker process; the per-job figure is the slope through runs of N and 2N jobs, "
            "so start-up and the drain (the fixed part) do not count. Under valgrind the CPU's "
            "SHA extensions and AVX-512 are not available (SHA-256 runs in software), so the "
            "count weighs hashing far more than the native CPU time does. The figure outside "
            "per-byte work (SHA-256 compression, memcpy/memset, base64) is the rest of the "
            "worker's code: the requests, the protocol, the JSON, the bookkeeping, and the "
            "steadier figure (the number of copies depends on how bodies arrive). Kernel time "
            "(about 40% of the native CPU time) is not counted. "
            "`scripts/bench.sh --check` fails when the store-on figure grows more than the "
            "tolerance of bench/instructions.json above it.", "",
            "| workload | instructions per job | outside per-byte work | fixed (start-up, drain) "
            "| CPU per job (native, this run) | committed (all / outside per-byte work) |",
            "|---|---|---|---|---|---|"] + rows


def render_markdown(r):
    """The report: every performance bar (docs/benchmark.md) as measured figure against target."""
    m = r["machine"]
    out = [
        f"# liveness-worker benchmark ({r['mode']})",
        "",
        f"{r['date']} on {m['cores']} cores ({m['cpu']}), {m['mem_gb']} GB RAM, "
        f"{m['kernel']}; RabbitMQ, Garage, the emulator and the workers all on this "
        f"machine. Rust worker: release build. {r['rounds']} alternating round(s) per "
        "comparison; figures are medians of the rounds.",
        "",
        "## Performance bars",
        "",
        "| bar | measured | target | |",
        "|---|---|---|---|",
    ]
    t = r["throughput"]
    bound = t["bound"]
    for label, key in (("Rust, results store on", "rust_store"),
                       ("Rust, no results store", "rust_nostore")):
        ratio = median([x["ratio"] for x in t[key]])
        if ratio is not None:
            out.append(
                f"| Throughput, 128 in flight, 300 ms latency, 200 KB ({label}) | "
                f"{ratio:.2f} of the bound ({ratio * bound:.0f} jobs/s) | ≥ 0.95 "
                f"(bound {bound:.0f} jobs/s) | {verdict(ratio >= 0.95)} |")
    for size_key, size in (("200KB", 200 * KB), ("3MB", 3 * MB)):
        c = r["cpu"][size_key]
        for label, key in (("store on", "rust_store"), ("no store", "rust_nostore")):
            v = median([x["cpu_per_job"] for x in c[key]])
            if v is not None:
                out.append(
                    f"| Worker CPU per job, {size_key.replace('KB', ' KB').replace('MB', ' MB')}, "
                    f"0 ms latency (Rust, {label}) | {fmt_us(v)} | ≤ {fmt_us(cpu_bar_s(size))} | "
                    f"{verdict(v <= cpu_bar_s(size))} |")
    for row in r["rss"]:
        bar = rss_bar_bytes(row["in_flight"], row["image_bytes"])
        q = f", {row['queued']:,} jobs queued" if row.get("queued") else ""
        out.append(
            f"| Peak RSS, {row['in_flight']} in flight, 3 MB{q} (Rust) | "
            f"{fmt_bytes(row['peak_rss'])} | ≤ {fmt_bytes(bar)} | {verdict(row['peak_rss'] <= bar)} |")
    for size_key in ("200KB", "3MB"):
        c = r["cpu"][size_key]
        rust = median([x["cpu_per_job"] for x in c["rust_nostore"]])
        py = median([x["cpu_per_job"] for x in c["python"]])
        if rust and py:
            out.append(
                f"| CPU per job vs Python, {size_key.replace('KB', ' KB').replace('MB', ' MB')} "
                f"(both without a results store) | {py / rust:.1f}× less | ≥ 10× | "
                f"{verdict(py / rust >= 10)} |")
    notes = []
    for label, key in (("with the results store", "rust_store"), ("without it", "rust_nostore")):
        rows = t[key]
        ratio = median([x["ratio"] for x in rows])
        if ratio is None or ratio >= 0.95:
            continue
        tm = lambda part, q: median([x.get("timings_ms", {}).get(part, {}).get(q)  # noqa: E731
                                     for x in rows if x.get("timings_ms")])
        total, fetch, vendor = tm("total", "mean"), tm("fetch", "mean"), tm("vendor", "mean")
        busy = median([x.get("machine_busy") for x in rows])
        if total:
            notes.append(
                f"Throughput {label}: a job spent {total:.0f} ms in the worker on average "
                f"(timings_ms.total: S3 fetch {fetch:.0f} ms, vendor call {vendor:.0f} ms, "
                f"{max(0.0, total - fetch - vendor):.0f} ms for the rest, results-store lookup and write "
                f"included); Little's law with that time gives 128 / {total:.0f} ms = "
                f"{128 / total * 1000:.0f} jobs/s, {300 / total:.2f} of the bound, against "
                f"{ratio:.2f} measured (the difference: delivery, publish confirm and ack, outside "
                f"timings_ms). The cores were {busy * 100:.0f}% busy: the time each job adds "
                "to the vendor's 300 ms limits it, above all the S3 fetch's tail.")
    if notes:
        out += ["", "Reading the misses:", ""] + [f"- {n}" for n in notes]
    side = side_by_side_rows(r)
    if side:
        # Only the kinds this run measured get a column.
        cols = [i for i in range(len(KINDS)) if any(cells[i] != "–" for _, cells in side)]
        title = ("Rust and Python side by side" if 2 in cols
                 else "Rust with and without the results store")
        out += ["", f"## {title} (same run, alternating)", "",
                "| measure | " + " | ".join(KIND_LABELS[KINDS[i]] for i in cols) + " |",
                "|---" * (len(cols) + 1) + "|"]
        out += ["| " + " | ".join([name] + [cells[i] for i in cols]) + " |"
                for name, cells in side]
    if any(x.get("cpu_per_job") is not None for k in KINDS for x in t[k]):
        out += ["", "## Where the machine's CPU went in the throughput runs", "",
                "CPU time per job of each process during the measured window (medians of the "
                "rounds), and how busy the machine's cores were.", "",
                "| process | Rust (store on) | Rust (no store) | Python (no store) |",
                "|---|---|---|---|"]
        ms = lambda v: "–" if v is None else f"{v * 1e3:.2f} ms"  # noqa: E731
        out.append("| the worker | " + " | ".join(trio(t, ms, "cpu_per_job")) + " |")
        for name in ("rabbitmq", "garage", "emulator", "everything else"):
            vals = []
            for k in KINDS:
                v = median([x.get("others_cpu_per_job", {}).get(name) for x in t[k]])
                vals.append(ms(v))
            out.append(f"| {name} | " + " | ".join(vals) + " |")
        out.append("| machine busy | " + " | ".join(
            trio(t, lambda v: "–" if v is None else f"{v * 100:.0f}% of {r['machine']['cores']} cores",
                 "machine_busy")) + " |")
    out += s3_section(r)
    out += instructions_section(r)
    d = r.get("drain") or {"jobs": 0, "runs": []}
    if d["runs"]:
        out += ["", "## Draining a backlog", "",
                f"{d['jobs']:,} jobs of 200 KB, emulator latency 300 ms, 32 in flight per replica "
                "(Rust, results store on), timed from the replicas' start to the last result.", "",
                "| replicas | time | jobs/s | bound (replicas × 32 / 0.3 s) |", "|---|---|---|---|"]
        for row in d["runs"]:
            out.append(f"| {row['replicas']} | {row['seconds']:.1f} s | {row['rate']:.0f} | "
                       f"{littles_bound(32 * row['replicas'], 0.3):.0f} |")
    for label, rows in (r.get("profiles") or {}).items():
        if not rows:
            continue
        by_dso, top = profile_summary(rows)
        size = label.replace("KB", " KB").replace("MB", " MB")
        out += ["", f"## Where the Rust worker's CPU goes, {size} (perf, separate run, no store)", "",
                "Share of the worker's samples by binary: "
                + ", ".join(f"{dso} {pct:.0f}%" for dso, pct in by_dso[:4]) + ".", "",
                "| share | binary | symbol |", "|---|---|---|"]
        for pct, dso, sym in top:
            out.append(f"| {pct:.1f}% | {dso} | `{sym[:90]}` |")
    if r.get("notes"):
        out += ["", "## Notes", ""] + [f"- {n}" for n in r["notes"]]
    out += ["", "Raw figures of every run: results.json."
            + (" Chart: chart.png." if chart_plan(r) else ""), ""]
    return "\n".join(out)


def size_label(size_key):
    return size_key.replace("KB", " KB").replace("MB", " MB")


def chart_plan(r):
    """What the chart draws, without drawing it (so the self-check can test
    it offline): one panel per measured bar, each a list of groups with one
    bar per kind that was measured (Rust store on, Rust no store, Python
    side by side) and the bar's target per group. Panels, groups and kinds
    that a partial run (`--only`, `--sizes`) did not measure are left out."""
    panels = []
    t = r["throughput"]

    def series(groups):
        """groups: [(label, {kind: value or None}, target)] -> the panel's
        kinds (any measured), groups with a value per kind."""
        kinds = [k for k in KINDS if any(g[1].get(k) is not None for g in groups)]
        return kinds, [{"label": lbl, "values": {k: vals.get(k) for k in kinds},
                        "target": target} for lbl, vals, target in groups]

    groups = [("128 in flight, 300 ms, 200 KB",
               {k: median([x.get("ratio") for x in t[k]]) for k in KINDS}, 0.95)]
    kinds, gs = series(groups)
    if kinds:
        panels.append({"key": "throughput", "title": "Throughput / Little's-law bound",
                       "ylabel": "fraction of the bound", "log": False, "kinds": kinds,
                       "groups": gs, "target_label": "bar ≥ 0.95"})
    groups = []
    for size_key, size in (("200KB", 200 * KB), ("3MB", 3 * MB)):
        c = r["cpu"][size_key]
        vals = {k: median([x.get("cpu_per_job") for x in c[k]]) for k in KINDS}
        if any(v is not None for v in vals.values()):
            groups.append((size_label(size_key), {k: v and v * 1e3 for k, v in vals.items()},
                           cpu_bar_s(size) * 1e3))
    kinds, gs = series(groups)
    if kinds:
        for g in gs:
            py = g["values"].get("python")
            # The 10x bar: a tenth of Python's CPU in the same run.
            g["target2"] = py / 10 if py else None
        panels.append({"key": "cpu", "title": "Worker CPU per job, 0 ms latency",
                       "ylabel": "ms CPU per job (log)", "log": True, "kinds": kinds,
                       "groups": gs, "target_label": "bar: 100 µs + 1.5 ns/byte",
                       "target2_label": "bar: Python / 10"})
    groups = []
    rss_runs = [("throughput", t, "128 × 200 KB", 128, 200 * KB)]
    rss_runs += [(f"cpu {s}", r["cpu"][s], f"32 × {size_label(s)}", 32, n)
                 for s, n in (("200KB", 200 * KB), ("3MB", 3 * MB))]
    for _, rows, label, in_flight, size in rss_runs:
        vals = {k: median([x.get("peak_rss") for x in rows[k]]) for k in KINDS}
        if any(v is not None for v in vals.values()):
            groups.append((label, {k: v and v / MB for k, v in vals.items()},
                           rss_bar_bytes(in_flight, size) / MB))
    kinds, gs = series(groups)
    if kinds:
        panels.append({"key": "rss_compared", "title": "Peak RSS in the compared runs",
                       "ylabel": "MB (log)", "log": True, "kinds": kinds, "groups": gs,
                       "target_label": "bar: 40 MB + 1.5 × in flight × size"})
    if r.get("rss"):
        gs = [{"label": f"{x['in_flight']}" + (f"\n{x['queued']:,} q" if x.get("queued") else ""),
               "values": {"rust_store": x["peak_rss"] / MB},
               "target": rss_bar_bytes(x["in_flight"], x["image_bytes"]) / MB}
              for x in r["rss"]]
        panels.append({"key": "rss", "title": "Peak RSS, 3 MB images (Rust only)\nby jobs in flight (and queued)",
                       "ylabel": "MB (log)", "log": True, "kinds": ["rust_store"], "groups": gs,
                       "target_label": "bar"})
    ins = r.get("instructions") or {}
    groups = []
    for size_key in ("200KB", "3MB"):
        for field, suffix, what in (("per_job", "", "all"),
                                    ("per_job_outside_byte_work", "/outside-byte-work",
                                     "outside per-byte work")):
            vals = {k: (ins.get(k) or {}).get(size_key, {}).get(field) for k in KINDS}
            if any(v is not None for v in vals.values()):
                committed = (ins.get("committed") or {}).get(f"rust_store/{size_key}{suffix}")
                groups.append((f"{size_label(size_key)}\n{what}",
                               {k: v and v / 1e6 for k, v in vals.items()},
                               committed and committed / 1e6))
    kinds, gs = series(groups)
    if kinds:
        panels.append({"key": "instructions", "title": "Instructions per job (callgrind)",
                       "ylabel": "million instructions per job (log)", "log": True,
                       "kinds": kinds, "groups": gs, "target_label": "committed figure"})
    return panels


def render_traffic(t):
    """The traffic scenario's report (docs/traffic.md)."""
    m = t["machine"]
    lim = t["limit_per_s"]
    out = [
        "# liveness-worker benchmark: vendor traffic control",
        "",
        f"{t['date']} on {m['cores']} cores ({m['cpu']}); RabbitMQ, Redis, Garage, the emulator "
        f"and {t['replicas']} worker replicas (release build, {t['concurrency']} in flight each) "
        f"on this machine. The emulator admits {lim} requests per sliding second (then 429 with "
        f"Retry-After) and answers in {t['latency_ms']} ms; 200 KB images.",
        "",
        "| row | measured | target | |",
        "|---|---|---|---|",
    ]
    k = t.get("known")
    if k:
        ratio = k["rate"] / lim
        share = k["rate_limited"] / max(1, k["submissions"])
        out.append(f"| {k['jobs']:,} jobs, worker told `rate = \"{k['configured']}\"`: throughput "
                   f"(10%–90% of the results) | {k['rate']:.1f} jobs/s = {ratio:.2f} of the limit "
                   f"| ≥ 0.90 | {verdict(ratio >= 0.9)} |")
        out.append(f"| same run: 429 answers / submissions | {k['rate_limited']} / {k['submissions']} "
                   f"= {share * 100:.2f} % | ≤ 2 % | {verdict(share <= 0.02)} |")
    u = t.get("unknown")
    if u:
        ratio = (u["rate_after_30s"] or 0) / lim
        share = u["rate_limited"] / max(1, u["submissions"])
        out.append(f"| {u['jobs']:,} jobs, limit unknown to the worker (adaptive concurrency "
                   f"`concurrency_max = {u['concurrency_max']}`): throughput after the first 30 s "
                   f"| {(u['rate_after_30s'] or 0):.1f} jobs/s = {ratio:.2f} of the limit | ≥ 0.80 "
                   f"| {verdict(ratio >= 0.8)} |")
        out.append(f"| same run: 429 answers / submissions (reported, no target) | "
                   f"{u['rate_limited']} / {u['submissions']} = {share * 100:.1f} % | – | |")
    b = t.get("budget")
    if b:
        ok = b["submissions"] == b["budget"] and b["dead"] == 0 and b["parked"] == b["jobs"] - b["budget"]
        out.append(f"| budget {b['budget']:,} with {b['jobs']:,} jobs: submissions, results, "
                   f"jobs parked, dead letters | {b['submissions']:,}, {b['results']:,}, "
                   f"{b['parked']:,} (parked {b['parks']:,} times), {b['dead']} | exactly "
                   f"{b['budget']:,}, –, {b['jobs'] - b['budget']:,}, 0 | {verdict(ok)} |")
        ok2 = b["drained_results"] == b["jobs"] and b["dead_after"] == 0
        out.append(f"| budget raised to {b['raised_to']:,} (`liveness-worker budget set`, no restart): results, submissions in all, "
                   f"dead letters | {b['drained_results']:,}, {b['submissions_after']:,}, "
                   f"{b['dead_after']} in {b['drain_seconds']:.0f} s | {b['jobs']:,}, "
                   f"{b['jobs']:,}, 0 | {verdict(ok2)} |")
    f = t.get("failover")
    if f:
        ok = f["results"] == f["jobs"] and f["dead"] == 0
        by = ", ".join(f"{k} {v:,}" for k, v in sorted(f["by_provider"].items()))
        out.append(f"| failover: {f['jobs']:,} face jobs (Argos, then Didit), Argos's key revoked "
                   f"at {f['revoked_at']:,} results: results, by vendor, dead letters | "
                   f"{f['results']:,} ({by}; {f['with_failover_field']:,} say why), {f['dead']} | "
                   f"{f['jobs']:,}, 0 | {verdict(ok)} |")
    if t.get("notes"):
        out += ["", "Notes:", ""] + [f"- {n}" for n in t["notes"]]
    out += ["", "Reproduce: `scripts/bench.sh --only traffic` (raw figures: traffic.json).", ""]
    return "\n".join(out)


def render_chart(r, path):
    """Draws chart_plan(r) into `path` (PNG); nothing when nothing was measured."""
    panels = chart_plan(r)
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    colors = {"rust_store": "#b7410e", "rust_nostore": "#e08a5a", "python": "#3572a5"}
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 4.8), squeeze=False)
    for ax, p in zip(axes[0], panels):
        n = len(p["kinds"])
        width = 0.8 / n
        for i, k in enumerate(p["kinds"]):
            xs = [j + (i - (n - 1) / 2) * width for j in range(len(p["groups"]))]
            vals = [g["values"].get(k) for g in p["groups"]]
            ax.bar([x for x, v in zip(xs, vals) if v is not None],
                   [v for v in vals if v is not None], width, color=colors[k],
                   label=KIND_LABELS[k])
        for target, style, label in (("target", "--", p["target_label"]),
                                     ("target2", ":", p.get("target2_label"))):
            first = True
            for j, g in enumerate(p["groups"]):
                if g.get(target) is None:
                    continue
                ax.hlines(g[target], j - 0.45, j + 0.45, color="k", ls=style, lw=1.2,
                          label=label if first else None)
                first = False
        ax.set_xticks(range(len(p["groups"])), [g["label"] for g in p["groups"]], fontsize=8)
        if p["log"]:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_ylabel(p["ylabel"])
        ax.set_title(p["title"], fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle(f"liveness-worker benchmark, {r['date']}, {r['machine']['cores']} cores "
                 f"({r['machine']['cpu']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def self_check():
    stat = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 75 0 0 20 0 9 0"
    assert parse_proc_stat(stat, 100) == 3.25
    assert parse_vm_hwm("Name:\tx\nVmPeak:\t 9 kB\nVmHWM:\t  2048 kB\nVmRSS: 1 kB\n") == 2097152
    assert littles_bound(128, 0.3) == 128 / 0.3
    assert abs(cpu_bar_s(200 * KB) - 400e-6) < 1e-12
    assert rss_bar_bytes(64, 3 * MB) == 328 * MB
    samples = [(0.0, 0), (1.0, 0), (2.0, 100), (3.0, 300), (4.0, 400)]
    assert time_at(samples, 50) == 1.5 and time_at(samples, 200) == 2.5
    assert time_at(samples, 500) is None
    assert window_rate(samples, 400, 0.25, 0.75) == 200 / (3.0 - 2.0)
    assert percentiles([5, 1, 3, 2, 4]) == {"p50": 3, "p99": 5, "mean": 3.0}
    assert percentiles([]) is None
    busy, total = parse_proc_stat_total("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n")
    tck = os.sysconf("SC_CLK_TCK")
    assert (busy, total) == (150 / tck, 1000 / tck)
    rep = ("# Overhead  Shared Object      Symbol\n"
           "    24.35%  liveness-worker    [.] sha2::sha256::x86::digest_blocks\n"
           "     7.94%  [kernel.kallsyms]  [k] _raw_spin_unlock_irqrestore\n"
           "     2.00%  [kernel.kallsyms]  [k] _copy_to_iter\n\n")
    rows = parse_perf_report(rep)
    assert rows[0] == (24.35, "liveness-worker", "sha2::sha256::x86::digest_blocks"), rows
    by_dso, top = profile_summary(rows, 2)
    assert by_dso[0] == ("liveness-worker", 24.35) and abs(by_dso[1][1] - 9.94) < 1e-9
    assert len(top) == 2
    p = png(1, 200 * KB)
    assert p.startswith(b"\x89PNG") and abs(len(p) - 200 * KB) < 1000 and png(2, 1000) != png(1, 1000)
    fake = fake_results()
    md = render_markdown(fake)
    assert "| Throughput, 128 in flight" in md and "**not met**" in md and "met |" in md
    assert "0.90 of the bound" in md and "14.0× less" in md, md
    assert "## Draining a backlog" in md and "Chart: chart.png" in md
    plan = chart_plan(fake)
    assert [p["key"] for p in plan] == ["throughput", "cpu", "rss_compared", "rss"], plan
    for p in plan[:3]:
        # Rust store on, Rust no store and Python side by side, for each bar.
        assert p["kinds"] == list(KINDS), p
    assert [g["label"] for g in plan[2]["groups"]] == ["128 × 200 KB", "32 × 200 KB", "32 × 3 MB"]
    assert abs(plan[1]["groups"][0]["target2"] - 0.42) < 1e-9, plan[1]
    # A partial run (--only cpu --sizes 200KB) shows what it measured, nothing else.
    part = fake_results()
    part["throughput"] = {"bound": 426.7, "rust_store": [], "rust_nostore": [], "python": []}
    part["cpu"]["3MB"] = {k: [] for k in KINDS}
    part["cpu"]["200KB"]["python"] = []
    part["rss"], part["drain"] = [], {"jobs": 0, "runs": []}
    md = render_markdown(part)
    for absent in ("Draining", "0 jobs", "Peak RSS,", "Throughput,", "throughput / bound",
                   "3MB", "3 MB", "Where the machine's CPU went", "vs Python", "Python"):
        assert absent not in md, (absent, md)
    assert "| CPU per job, 200KB (0 ms) | 400 µs | 300 µs |" in md, md
    plan = chart_plan(part)
    assert [p["key"] for p in plan] == ["cpu", "rss_compared"], plan
    assert plan[0]["kinds"] == ["rust_store", "rust_nostore"] and len(plan[0]["groups"]) == 1
    assert plan[0]["groups"][0]["target2"] is None
    assert "## S3 requests per job" not in md and "Instructions per job" not in md
    # S3 requests per job and instructions per job, when measured.
    full = fake_results()
    full["cpu"]["200KB"]["rust_store"][0]["s3_per_job"] = {
        "requests": {"image_get": 1.0, "outcome_get": 1.0, "outcome_put": 1.0, "other": 0.01},
        "written_bytes": {"outcome_put": 1500.0}}
    full["cpu"]["200KB"]["rust_nostore"][0]["s3_per_job"] = {
        "requests": {"image_get": 1.0}, "written_bytes": {}}
    full["instructions"] = {"committed": {"rust_store/200KB": 5_000_000,
                                          "rust_store/200KB/outside-byte-work": 2_000_000},
                            "rust_store": {"200KB": {"per_job": 5.1e6, "fixed": 9e8,
                                                     "per_job_outside_byte_work": 2.05e6,
                                                     "runs": [[30, 1.053e9, 9e7]]}}}
    md = render_markdown(full)
    assert "| `outcome_put` | 1.00 | 0.00 |" in md and "| **total** | **3.01** | **1.00** |" in md, md
    assert "| bytes written per job | 1,500 | 0 |" in md, md
    assert "| 200 KB, Rust (store on) | 5.10 M | 2.05 M | 900 M | 400 µs | 5.00 M / 2.00 M |" in md, md
    cg = ("events: Ir\nsummary: 1111\nfn=(1) main\n0 100\ncfn=(2) sha2::sha256::compress256\n"
          "calls=1 0\n0 1000\n+1 10\nfn=(2)\n0 1000\nfn=(3) other\n* 1\ntotals: 1111\n")
    costs = callgrind_self_costs(cg)
    assert costs == {"main": 110, "sha2::sha256::compress256": 1000, "other": 1}, costs
    assert split_byte_work(costs) == (1000, 111)
    assert [p["key"] for p in chart_plan(full)][-1] == "instructions"
    metrics = ('# HELP liveness_s3_requests S3 requests\n'
               'liveness_s3_requests_total{op="image_get"} 30\n'
               'liveness_s3_requests_total{op="outcome_put"} 30\n'
               'liveness_s3_written_bytes_total{op="outcome_put"} 45123\n'
               'liveness_jobs_total{outcome="result"} 30\n')
    assert parse_s3_metrics(metrics) == {"requests": {"image_get": 30, "outcome_put": 30},
                                         "written_bytes": {"outcome_put": 45123}}
    assert parse_callgrind_total("events: Ir\nsummary: 126375\nfn=x\n0 5\ntotals: 126375\n") == 126375
    slope, fixed = per_job_instructions([(30, 1_000 + 30 * 7), (60, 1_000 + 60 * 7)])
    assert abs(slope - 7) < 1e-9 and abs(fixed - 1000) < 1e-6
    slope, fixed = per_job_instructions([(30, 1210), (60, 1420), (30, 1212), (60, 1418)])
    assert abs(slope - 6.9333) < 1e-3, slope
    committed = {"tolerance": 0.03, "per_job": {"rust_store/200KB": 1000}}
    assert check_instructions({"rust_store/200KB": 1030}, committed)[0][4]
    assert not check_instructions({"rust_store/200KB": 1031}, committed)[0][4]
    assert not check_instructions({}, committed)[0][4]
    empty = dict(part, cpu={s: {k: [] for k in KINDS} for s in ("200KB", "3MB")})
    assert chart_plan(empty) == [] and "Chart" not in render_markdown(empty)
    tr = render_traffic({
        "machine": {"cores": 2, "cpu": "x"}, "date": "d", "replicas": 3, "concurrency": 64,
        "limit_per_s": 50, "latency_ms": 20,
        "known": {"jobs": 6000, "configured": "48/s", "rate": 47.0, "rate_limited": 3,
                  "submissions": 6003},
        "unknown": {"jobs": 6000, "concurrency_max": 64, "rate_after_30s": 35.0,
                    "rate_limited": 900, "submissions": 6900},
        "budget": {"budget": 1000, "jobs": 3000, "submissions": 1000, "results": 1000,
                   "parked": 2000, "parks": 5000, "dead": 0, "raised_to": 100000,
                   "drained_results": 3000, "submissions_after": 3000, "dead_after": 0,
                   "drain_seconds": 40.0},
        "failover": {"jobs": 3000, "revoked_at": 1500, "results": 3000,
                     "by_provider": {"argos": 1520, "didit": 1480}, "with_failover_field": 1480,
                     "dead": 0}})
    assert "0.94 of the limit | ≥ 0.90 | met" in tr and "0.70 of the limit" in tr, tr
    assert "**not met**" in tr and "| 1,000, 1,000, 2,000 (parked 5,000 times), 0 |" in tr, tr
    assert "3,000 (argos 1,520, didit 1,480; 1,480 say why), 0 | 3,000, 0 | met |" in tr, tr
    print("bench self-check: ok")


def fake_results():
    run = lambda **kw: dict({"peak_rss": 50 * MB}, **kw)  # noqa: E731
    return {
        "mode": "self-check", "date": "2026-01-01", "rounds": 1,
        "machine": {"cores": 2, "cpu": "x", "mem_gb": 1, "kernel": "k"},
        "throughput": {"bound": 426.7, "rust_store": [run(ratio=0.9)],
                       "rust_nostore": [run(ratio=0.96)], "python": [run(ratio=0.3)]},
        "cpu": {s: {"rust_store": [run(cpu_per_job=0.0004)],
                    "rust_nostore": [run(cpu_per_job=0.0003)],
                    "python": [run(cpu_per_job=0.0042)]} for s in ("200KB", "3MB")},
        "rss": [{"in_flight": 64, "image_bytes": 3 * MB, "peak_rss": 100 * MB}],
        "drain": {"jobs": 10, "runs": [{"replicas": 1, "seconds": 1.0, "rate": 10.0}]},
    }


# ---------------------------------------------------------------- processes

def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        return parse_proc_stat(f.read(), os.sysconf("SC_CLK_TCK"))


def vm_hwm(pid):
    with open(f"/proc/{pid}/status") as f:
        return parse_vm_hwm(f.read())


def parse_proc_stat_total(text):
    """(busy, total) CPU seconds of the whole machine from /proc/stat's
    first line (idle and iowait are not busy)."""
    f = [int(x) for x in text.splitlines()[0].split()[1:]]
    total = sum(f[:8])  # user nice system idle iowait irq softirq steal
    return (total - f[3] - f[4]) / os.sysconf("SC_CLK_TCK"), total / os.sysconf("SC_CLK_TCK")


def machine_cpu():
    with open("/proc/stat") as f:
        return parse_proc_stat_total(f.read())


def parse_perf_report(text):
    """[(percent, dso, symbol)] from `perf report --stdio --sort dso,symbol`."""
    rows = []
    for line in text.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[.\]\s+(.*\S)", line)
        if m:
            rows.append((float(m.group(1)), m.group(2), m.group(3).strip()))
    return rows


def profile_summary(rows, top=8):
    """Shares by binary (kernel, the worker, libc, ...) and the top symbols."""
    by_dso = {}
    for pct, dso, _ in rows:
        by_dso[dso] = by_dso.get(dso, 0.0) + pct
    return sorted(by_dso.items(), key=lambda x: -x[1]), rows[:top]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine():
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    return {"cores": os.cpu_count(), "cpu": cpu, "mem_gb": round(mem_kb / 1024 / 1024),
            "kernel": f"Linux {platform.release()}"}


class Bench:
    def __init__(self, a):
        import boto3
        import pika

        self.a = a
        self.pika = pika
        self.run_id = f"{random.getrandbits(32):08x}"
        self.key = f"bench-{random.getrandbits(64):x}"
        self.bucket = os.environ["LIVENESS_TEST_IMAGES_BUCKET"]
        self.results_bucket = os.environ["LIVENESS_TEST_RESULTS_BUCKET"]
        self.tmp = f"/tmp/liveness-bench-{self.run_id}"
        os.makedirs(self.tmp, exist_ok=True)
        self.s3 = boto3.client(
            "s3", endpoint_url=os.environ["LIVENESS_S3__ENDPOINT"],
            region_name=os.environ["LIVENESS_S3__REGION"],
            aws_access_key_id=os.environ["LIVENESS_S3__ACCESS_KEY_ID"],
            aws_secret_access_key=os.environ["LIVENESS_S3__SECRET_ACCESS_KEY"],
            config=__import__("botocore.config").config.Config(s3={"addressing_style": "path"}))
        self.conn = pika.BlockingConnection(pika.URLParameters(os.environ["LIVENESS_BROKER__URL"]))
        self.ch = self.conn.channel()
        self.images = {}
        self.n = 0
        self.emulator = None

    def log(self, msg):
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    # -- setup

    def upload_images(self, labels=("200KB", "3MB")):
        for size, label, count in ((200 * KB, "200KB", 8), (3 * MB, "3MB", 4)):
            if label not in labels:
                continue
            uris = []
            for i in range(count):
                key = f"bench/{self.run_id}/{label}-{i}.png"
                self.s3.put_object(Bucket=self.bucket, Key=key, Body=png(i * 7919 + size, size),
                                   ContentType="image/png")
                uris.append(f"s3://{self.bucket}/{key}")
            self.images[label] = uris
        self.log(f"uploaded sample images under s3://{self.bucket}/bench/{self.run_id}/")

    def start_emulator(self):
        port = free_port()
        self.emu_url = f"http://127.0.0.1:{port}"
        env = dict(os.environ, RUST_LOG="warn")
        self.emulator = subprocess.Popen(
            [self.a.worker_bin, "emulator", "--listen", f"127.0.0.1:{port}",
             "--argos-api-key", self.key],
            env=env, stdout=subprocess.DEVNULL,
            stderr=open(f"{self.tmp}/emulator.log", "w"))
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{self.emu_url}/_admin/faults", timeout=1).read()
                return
            except OSError:
                time.sleep(0.1)
        raise SystemExit("the emulator did not start; see " + f"{self.tmp}/emulator.log")

    def set_latency(self, ms):
        req = urllib.request.Request(f"{self.emu_url}/_admin/faults", method="PUT",
                                     data=json.dumps({"latency_ms": ms}).encode(),
                                     headers={"content-type": "application/json"})
        urllib.request.urlopen(req, timeout=5).read()

    def set_faults(self, faults):
        req = urllib.request.Request(f"{self.emu_url}/_admin/faults", method="PUT",
                                     data=json.dumps(faults).encode(),
                                     headers={"content-type": "application/json"})
        urllib.request.urlopen(req, timeout=5).read()

    def set_credentials(self, vendor, valid):
        req = urllib.request.Request(f"{self.emu_url}/_admin/credentials/{vendor}", method="POST",
                                     data=json.dumps({"valid": valid}).encode(),
                                     headers={"content-type": "application/json"})
        urllib.request.urlopen(req, timeout=5).read()

    def read_results(self, queue):
        """Consumes the results in `queue`: (results by provider, how many
        carry a failover field, total)."""
        ch = self.conn.channel()
        ch.basic_qos(prefetch_count=1000)
        by, failed_over, total = {}, 0, 0
        for _method, _props, body in ch.consume(queue, auto_ack=True, inactivity_timeout=1.0):
            if body is None:
                break
            r = json.loads(body)
            by[r.get("provider")] = by.get(r.get("provider"), 0) + 1
            failed_over += 1 if r.get("failover") else 0
            total += 1
        ch.cancel()
        ch.close()
        return by, failed_over, total

    def vendor_calls(self):
        c = json.loads(urllib.request.urlopen(f"{self.emu_url}/_admin/calls", timeout=5).read())
        a = c.get("argos", {})
        return a.get("submissions", 0), a.get("rate_limited", 0)

    # -- one run

    def worker_env(self, prefix, concurrency, store):
        env = dict(os.environ)
        env.update({
            "LIVENESS_BROKER__PREFIX": prefix,
            "LIVENESS_BROKER__CONNECTION_NAME": f"liveness-bench-{self.run_id}",
            "LIVENESS_WORKER__CONCURRENCY": str(concurrency),
            "LIVENESS_WORKER__ALLOWED_BUCKETS": json.dumps([self.bucket]),
            "LIVENESS_PROVIDERS__ARGOS__BASE_URL": f"{self.emu_url}/modules",
            "LIVENESS_PROVIDERS__ARGOS__API_KEY": self.key,
            "LIVENESS_RESULTS__BUCKET": self.results_bucket if store else "",
            "LIVENESS_RESULTS__PREFIX": f"bench/{self.run_id}/",
            # The production configuration: claims in Redis with the results store.
            "LIVENESS_COORDINATION__REDIS_URL":
                os.environ.get("LIVENESS_TEST_REDIS_URL", "") if store else "",
            "LIVENESS_TELEMETRY__LISTEN": "",  # set per replica in run()
            "LIVENESS_TELEMETRY__LOG_FORMAT": "json",
        })
        env.pop("RUST_LOG", None)
        return env

    def spawn(self, kind, env, tag, wrap=()):
        cmd = ([self.a.worker_bin, "run"] if kind.startswith("rust")
               else [self.a.python, os.path.join(HERE, "python_worker.py")])
        cmd = list(wrap) + cmd
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                stderr=open(f"{self.tmp}/{tag}.log", "w"))

    def depth(self, queue):
        q = self.ch.queue_declare(queue, passive=True)
        return q.method.message_count, q.method.consumer_count

    def enqueue(self, prefix, n, label, check="document"):
        """Publishes n jobs through `liveness-worker enqueue -` (pipelined
        confirms); unique job ids per run."""
        env = self.worker_env(prefix, 1, False)
        p = subprocess.Popen([self.a.worker_bin, "enqueue", "-"], env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             stderr=open(f"{self.tmp}/enqueue-{prefix}.log", "w"))
        uris = self.images[label]
        self.n += 1
        batch = []
        for i in range(n):
            batch.append(
                f'{{"schema":"liveness.job.v1","job_id":"bench-{self.run_id}-{self.n}-{i}",'
                f'"check":"{check}","image":"{uris[i % len(uris)]}"}}\n')
            if len(batch) == 10000:
                p.stdin.write("".join(batch).encode())
                batch = []
        p.stdin.write("".join(batch).encode())
        p.stdin.close()
        if p.wait() != 0:
            raise SystemExit(f"enqueue failed; see {self.tmp}/enqueue-{prefix}.log")

    def attach_perf(self, pid, tag):
        """perf record (call graphs) of one worker for the measured window."""
        data = f"{self.tmp}/perf-{tag}.data"
        p = subprocess.Popen(["perf", "record", "-q", "-g", "-F", "999", "-p", str(pid), "-o", data],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        return p, data, tag

    def finish_perf(self, p, data, tag):
        p.send_signal(signal.SIGINT)
        p.wait(30)
        os.makedirs(self.a.out, exist_ok=True)
        out = os.path.join(self.a.out, f"perf-{tag}.txt")
        with open(out, "w") as f:
            f.write(f"# perf report of the Rust worker, {tag} (self time by symbol)\n")
            f.flush()
            subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children",
                            "--percent-limit", "0.7", "--sort", "dso,symbol", "-g", "none"],
                           stdout=f, stderr=subprocess.DEVNULL, check=False)
        self.log(f"perf profile: {out}")
        rep = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children",
                              "--sort", "dso,symbol", "-g", "none"],
                             capture_output=True, text=True, check=False)
        return parse_perf_report(rep.stdout)

    def remove_objects(self):
        """Deletes this run's images and stored outcomes."""
        for bucket in (self.bucket, self.results_bucket):
            token = {}
            while True:
                page = self.s3.list_objects_v2(Bucket=bucket, Prefix=f"bench/{self.run_id}/",
                                               **token)
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    self.s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
                if not page.get("IsTruncated"):
                    break
                token = {"ContinuationToken": page["NextContinuationToken"]}

    def timings(self, queue):
        """Per-job timings_ms (fetch, vendor, total) of the results in
        `queue`, read after the measurement; percentiles in ms."""
        ch = self.conn.channel()
        ch.basic_qos(prefetch_count=1000)
        got = {"fetch": [], "vendor": [], "total": []}
        for _method, _props, body in ch.consume(queue, auto_ack=True, inactivity_timeout=1.0):
            if body is None:
                break
            t = json.loads(body).get("timings_ms") or {}
            for k in got:
                if isinstance(t.get(k), (int, float)):
                    got[k].append(t[k])
        ch.cancel()
        ch.close()
        return {k: percentiles(v) for k, v in got.items() if v}

    def s3_requests(self, ports):
        """The S3 requests (and bytes written) of the Rust replicas listening
        on `ports`, summed; None for the Python worker."""
        if not ports:
            return None
        total = {"requests": {}, "written_bytes": {}}
        for port in ports:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
            for k, v in parse_s3_metrics(text.decode()).items():
                for op, n in v.items():
                    total[k][op] = total[k].get(op, 0) + n
        return total

    def service_pids(self):
        """The processes that share the machine with the worker."""
        pids = {"emulator": self.emulator.pid}
        try:
            with open(os.path.join(os.environ["LIVENESS_SERVICES_DIR"], "garage.pid")) as f:
                pids["garage"] = int(f.read())
        except (OSError, ValueError, KeyError):
            pass
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/comm") as f:
                        if f.read().strip() == "beam.smp":
                            pids["rabbitmq"] = int(d)
                except OSError:
                    pass
        return pids

    def others_cpu(self, pids):
        out = {}
        for name, pid in pids.items():
            try:
                out[name] = cpu_seconds(pid)
            except OSError:
                pass
        return out

    def cleanup(self, prefix):
        n = python_worker.names(prefix)
        for q in ("jobs_queue", "results_queue", "dead_queue", "poison_queue"):
            self.ch.queue_delete(n[q])
        for d in ("5s", "30s", "2m", "10m"):
            self.ch.queue_delete(f"{prefix}.liveness.retry.{d}")
        # The vendors' wait queues (declared for a rate or adaptive concurrency).
        for v in ("argos", "intellicheck", "didit"):
            self.ch.queue_delete(f"{prefix}.liveness.wait.{v}")
        for e in ("jobs_exchange", "results_exchange", "dead_exchange"):
            self.ch.exchange_delete(n[e])

    def instructions(self, kind, label, jobs, concurrency, repeats=1):
        """Instructions per job of the Rust worker (`kind`), counted by
        valgrind's callgrind (instructions, not time: a busy machine does not
        change them): the worker runs `jobs`, then 2 × `jobs` jobs of `label`
        at 0 ms emulator latency, each run a whole process under callgrind,
        `repeats` times; the per-job figure is the slope through the runs,
        so start-up and the drain (the intercept) do not count."""
        runs = []
        for _ in range(repeats):
            for n in (jobs, 2 * jobs):
                out = f"{self.tmp}/callgrind-{kind}-{label}-{n}-{self.n + 1}.out"
                wrap = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                        "--dump-instr=no", "--dump-line=no"]
                t = time.monotonic()
                self.run(kind, label, n, concurrency, 0, wrap=wrap, exit_timeout=600)
                with open(out) as f:
                    text = f.read()
                ir = parse_callgrind_total(text)
                bulk, _ = split_byte_work(callgrind_self_costs(text))
                runs.append((n, ir, bulk))
                self.log(f"callgrind {kind} {label} jobs={n}: {ir:,} instructions, "
                         f"{bulk:,} of them per-byte work ({time.monotonic() - t:.0f}s)")
        per_job, fixed = per_job_instructions([(n, ir) for n, ir, _ in runs])
        other, fixed_other = per_job_instructions([(n, ir - sha) for n, ir, sha in runs])
        self.log(f"callgrind {kind} {label}: {per_job:,.0f} instructions per job, "
                 f"{other:,.0f} outside per-byte work (fixed {fixed:,.0f})")
        return {"jobs": jobs, "in_flight": concurrency, "runs": runs, "per_job": per_job,
                "fixed": fixed, "per_job_outside_byte_work": other,
                "fixed_outside_byte_work": fixed_other}

    def run(self, kind, label, jobs, concurrency, latency_ms, replicas=1, backlog=False,
            stop_after=None, profile=False, wrap=(), exit_timeout=60):
        """One measured run. kind: rust_store, rust_nostore or python.
        backlog: jobs are queued before the workers start (drain, queue
        depth); else they are published once the workers consume, between the
        two CPU readings. wrap: a command the worker runs under (valgrind),
        waited for up to exit_timeout after SIGTERM."""
        prefix = f"bench-{self.run_id}-{self.n + 1}"
        self.set_latency(latency_ms)
        declare_ch = self.conn.channel()
        python_worker.declare_topology(declare_ch, prefix)
        declare_ch.close()
        names = python_worker.names(prefix)
        env = self.worker_env(prefix, concurrency, kind == "rust_store")
        if backlog:
            self.enqueue(prefix, jobs, label)
        t_start = time.monotonic()
        ports = []
        procs = []
        for i in range(replicas):
            e = dict(env)
            if kind.startswith("rust"):
                # The worker's metrics: its S3 requests by reason.
                ports.append(free_port())
                e["LIVENESS_TELEMETRY__LISTEN"] = f"127.0.0.1:{ports[-1]}"
            procs.append(self.spawn(kind, e, f"{prefix}-{kind}-{i}", wrap))
        try:
            while not backlog and self.depth(names["jobs_queue"])[1] < replicas:
                for p in procs:
                    if p.poll() is not None:
                        raise SystemExit(f"{kind} worker exited; see {self.tmp}")
                time.sleep(0.05)
            perf = None
            if (profile or self.a.perf) and kind.startswith("rust") and not backlog:
                perf = self.attach_perf(procs[0].pid, f"{kind}-{label}-{latency_ms}ms")
            others = self.service_pids()
            others0, machine0 = self.others_cpu(others), machine_cpu()
            cpu0 = sum(cpu_seconds(p.pid) for p in procs)
            t0 = time.monotonic()
            if not backlog:
                self.enqueue(prefix, jobs, label)
            target = stop_after or jobs
            samples = []
            deadline = time.monotonic() + self.a.run_timeout
            while True:
                done = self.depth(names["results_queue"])[0]
                dead = self.depth(names["dead_queue"])[0]
                samples.append((time.monotonic() - t0, done))
                if dead:
                    raise SystemExit(f"{dead} dead letters in a {kind} run; see {self.tmp}")
                if done >= target:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"{kind} run timed out at {done}/{target}; see {self.tmp}")
                for p in procs:
                    if p.poll() is not None:
                        raise SystemExit(f"{kind} worker exited; see {self.tmp}")
                time.sleep(0.1)
            t1 = time.monotonic()
            cpu = sum(cpu_seconds(p.pid) for p in procs) - cpu0
            others1, machine1 = self.others_cpu(others), machine_cpu()
            shares = {k: (others1[k] - others0[k]) / target for k in others1 if k in others0}
            busy = machine1[0] - machine0[0]
            shares["everything else"] = max(0.0, busy / target - cpu / target - sum(shares.values()))
            machine_busy = busy / max(1e-9, machine1[1] - machine0[1])
            peak = max(vm_hwm(p.pid) for p in procs)
            s3 = self.s3_requests(ports)
            profile_rows = self.finish_perf(*perf) if perf else None
            for p in procs:
                p.send_signal(signal.SIGTERM)
            timings = self.timings(names["results_queue"]) if not stop_after else {}
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(exit_timeout)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            self.cleanup(prefix)
        out = {"kind": kind, "image": label, "jobs": jobs, "in_flight": concurrency,
               "latency_ms": latency_ms, "replicas": replicas, "seconds": t1 - t0,
               "drain_seconds": t1 - t_start, "rate": window_rate(samples, target),
               "cpu_seconds": cpu, "cpu_per_job": cpu / target, "peak_rss": peak,
               "timings_ms": timings, "others_cpu_per_job": shares,
               "machine_busy": machine_busy, "profile": profile_rows,
               "s3_per_job": s3 and {k: {op: n / target for op, n in v.items()}
                                     for k, v in s3.items()}}
        self.log(f"{kind:12} {label:5} jobs={target:<7} in_flight={concurrency:<3} "
                 f"latency={latency_ms}ms replicas={replicas}: {out['seconds']:.1f}s, "
                 f"{(out['rate'] or 0):.0f} jobs/s, cpu/job {out['cpu_per_job'] * 1e6:.0f}µs, "
                 f"peak rss {peak / MB:.0f} MB")
        return out


def metric_sum(port, name):
    """Sum of one metric's series on a worker's /metrics (0 when absent)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return 0.0
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            try:
                total += float(line.rsplit(" ", 1)[1])
            except ValueError:
                pass
    return total


def traffic_scenario(b, short):
    """The traffic rows (docs/traffic.md, issue 18)."""
    limit, latency, replicas, conc = 50, 20, 3, 64
    jobs = 1500 if short else 6000
    t = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
         "machine": machine(), "limit_per_s": limit, "latency_ms": latency,
         "replicas": replicas, "concurrency": conc, "notes": []}
    b.set_latency(latency)
    b.set_faults({"vendor": "argos", "rate_limit_per_minute": limit, "rate_limit_window_ms": 1000})
    redis = os.environ["LIVENESS_TEST_REDIS_URL"]

    def start(prefix, extra):
        env = b.worker_env(prefix, conc, True)
        env["LIVENESS_COORDINATION__REDIS_URL"] = redis
        env.update(extra)
        procs, ports = [], []
        for i in range(replicas):
            port = free_port()
            e = dict(env, LIVENESS_TELEMETRY__LISTEN=f"127.0.0.1:{port}")
            procs.append(b.spawn("rust", e, f"{prefix}-{i}"))
            ports.append(port)
        names = python_worker.names(prefix)
        while b.depth(names["jobs_queue"])[1] < replicas:
            for p in procs:
                if p.poll() is not None:
                    raise SystemExit(f"a worker exited; see {b.tmp}")
            time.sleep(0.05)
        return procs, ports

    def stop(procs):
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(90)
            except subprocess.TimeoutExpired:
                p.kill()

    def drive(prefix, n, extra, until=None):
        """Workers up, n jobs published, results followed until `until(done)`
        or all n; returns samples, counts and the processes (still running)."""
        names = python_worker.names(prefix)
        procs, ports = start(prefix, extra)
        sub0, lim0 = b.vendor_calls()
        t0 = time.monotonic()
        b.enqueue(prefix, n, "200KB")
        samples = []
        deadline = time.monotonic() + b.a.run_timeout
        try:
            while True:
                done = b.depth(names["results_queue"])[0]
                samples.append((time.monotonic() - t0, done))
                if (until and until(done, ports)) or done >= n:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"traffic run timed out at {done}/{n}; see {b.tmp}")
                time.sleep(0.2)
        except BaseException:
            stop(procs)
            b.cleanup(prefix)
            raise
        sub1, lim1 = b.vendor_calls()
        return {"samples": samples, "submissions": sub1 - sub0, "rate_limited": lim1 - lim0,
                "dead": b.depth(names["dead_queue"])[0], "procs": procs, "ports": ports}

    def declare(prefix):
        ch = b.conn.channel()
        python_worker.declare_topology(ch, prefix)
        ch.close()

    # 1. The limit configured (a little under the vendor's: its window is a
    # sliding second, the worker's spacing is exact only on average).
    configured = "47/s"
    prefix = f"bench-{b.run_id}-traffic-known"
    declare(prefix)
    x = drive(prefix, jobs, {"LIVENESS_TRAFFIC__ARGOS__RATE": configured})
    stop(x["procs"])
    b.cleanup(prefix)
    t["known"] = {"jobs": jobs, "configured": configured,
                  "rate": window_rate(x["samples"], jobs), "submissions": x["submissions"],
                  "rate_limited": x["rate_limited"], "dead": x["dead"],
                  "seconds": x["samples"][-1][0]}
    b.log(f"traffic known limit: {t['known']}")

    # 2. The limit unknown: adaptive concurrency and the 429 block only.
    prefix = f"bench-{b.run_id}-traffic-unknown"
    declare(prefix)
    x = drive(prefix, jobs, {"LIVENESS_TRAFFIC__ARGOS__CONCURRENCY_MAX": "64",
                             "LIVENESS_TRAFFIC__ARGOS__CONCURRENCY_INITIAL": "8"})
    stop(x["procs"])
    b.cleanup(prefix)
    s30 = [(ts, d) for ts, d in x["samples"] if ts >= 30.0]
    rate30 = ((s30[-1][1] - s30[0][1]) / (s30[-1][0] - s30[0][0])
              if len(s30) >= 2 and s30[-1][0] > s30[0][0] else None)
    t["unknown"] = {"jobs": jobs, "concurrency_max": 64, "rate_after_30s": rate30,
                    "rate": window_rate(x["samples"], jobs), "submissions": x["submissions"],
                    "rate_limited": x["rate_limited"], "dead": x["dead"],
                    "seconds": x["samples"][-1][0]}
    b.log(f"traffic unknown limit: {t['unknown']}")

    # 3. A budget: 1 000 of 3 000 jobs, the rest parked; then raised.
    b.set_faults({"vendor": "argos", "rate_limit_per_minute": 0})
    budget, bjobs = (300, 900) if short else (1000, 3000)
    prefix = f"bench-{b.run_id}-traffic-budget"
    declare(prefix)
    names = python_worker.names(prefix)
    park = {"LIVENESS_TRAFFIC__ARGOS__DAILY_BUDGET": str(budget),
            "LIVENESS_RETRY__CREDENTIALS_PARK_STEP": "0"}
    sub_before, _ = b.vendor_calls()

    def parked_enough(done, ports):
        # Every job past the budget has parked at least once, twice over.
        parks = sum(metric_sum(p, 'liveness_vendor_throttled_total{vendor="argos",reason="budget"}')
                    for p in ports)
        return done >= budget and parks >= 2 * (bjobs - budget)

    x = drive(prefix, bjobs, park, until=parked_enough)
    time.sleep(2)
    results = b.depth(names["results_queue"])[0]
    parks = sum(metric_sum(p, 'liveness_vendor_throttled_total{vendor="argos",reason="budget"}')
                for p in x["ports"])
    procs = x["procs"]
    sub_mid, _ = b.vendor_calls()
    dead = b.depth(names["dead_queue"])[0]
    # Raised at run time, the replicas still running (they notice within 5 s).
    t0 = time.monotonic()
    raised = 100 * budget
    env = dict(b.worker_env(prefix, conc, True), LIVENESS_COORDINATION__REDIS_URL=redis, **park)
    subprocess.run([b.a.worker_bin, "budget", "set", "argos", "--daily", str(raised)],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + b.a.run_timeout
    while b.depth(names["results_queue"])[0] < bjobs and time.monotonic() < deadline:
        time.sleep(0.2)
    drain = time.monotonic() - t0
    drained = b.depth(names["results_queue"])[0]
    stop(procs)
    sub_after, _ = b.vendor_calls()
    t["budget"] = {"budget": budget, "jobs": bjobs, "submissions": sub_mid - sub_before,
                   "results": results, "parked": bjobs - results - dead, "parks": int(parks),
                   "dead": dead, "raised_to": raised, "drained_results": drained,
                   "submissions_after": sub_after - sub_before,
                   "dead_after": b.depth(names["dead_queue"])[0], "drain_seconds": drain}
    b.cleanup(prefix)
    b.log(f"traffic budget: {t['budget']}")
    # 4. Failover: face jobs, Argos by default and Didit behind it; Argos's
    # key revoked once half the results are in.
    fjobs = 1000 if short else 3000
    prefix = f"bench-{b.run_id}-traffic-failover"
    declare(prefix)
    names = python_worker.names(prefix)
    fo = {"LIVENESS_PROVIDERS__DEFAULT_FACE": "argos",
          "LIVENESS_PROVIDERS__FAILOVER_FACE": '["didit"]',
          "LIVENESS_PROVIDERS__DIDIT__BASE_URL": b.emu_url,
          "LIVENESS_PROVIDERS__DIDIT__API_KEY": b.key,
          "LIVENESS_RETRY__CREDENTIALS_PARK_STEP": "0"}
    procs, _ = start(prefix, fo)
    revoked_at = None
    try:
        b.enqueue(prefix, fjobs, "200KB", check="face")
        deadline = time.monotonic() + b.a.run_timeout
        while True:
            done = b.depth(names["results_queue"])[0]
            if revoked_at is None and done >= fjobs // 2:
                b.set_credentials("argos", False)
                revoked_at = done
            if done >= fjobs or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        stop(procs)
        b.set_credentials("argos", True)
    by, failed_over, total = b.read_results(names["results_queue"])
    t["failover"] = {"jobs": fjobs, "revoked_at": revoked_at, "results": total,
                     "by_provider": by, "with_failover_field": failed_over,
                     "dead": b.depth(names["dead_queue"])[0]}
    b.cleanup(prefix)
    b.log(f"traffic failover: {t['failover']}")
    if short:
        t["notes"].append(f"Short mode: {jobs} jobs per rate row, budget {budget} of {bjobs}.")
    return t


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--self-check", action="store_true")
    ap.add_argument("--short", action="store_true", help="a few minutes instead of the full run")
    ap.add_argument("--worker-bin", default="target/release/liveness-worker")
    ap.add_argument("--python", default=sys.executable, help="the venv's python (pika, boto3, requests)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--only", default="throughput,cpu,rss,drain,instructions")
    ap.add_argument("--run-timeout", type=float, default=900)
    ap.add_argument("--sizes", help="cpu scenario image sizes (default: 200KB,3MB)")
    ap.add_argument("--no-profile", action="store_true",
                    help="skip the perf profiles of the Rust worker's CPU per job")
    ap.add_argument("--perf", action="store_true",
                    help="profile the Rust worker's CPU runs with perf; reports go to --out")
    ap.add_argument("--check", action="store_true",
                    help="count the Rust worker's instructions per job (callgrind, store on, "
                         f"200 KB) and fail when they exceed {INSTRUCTIONS_FILE} by more than "
                         "its tolerance; writes no report")
    ap.add_argument("--update-instructions", action="store_true",
                    help=f"with --check: write the measured figure into {INSTRUCTIONS_FILE}")
    a = ap.parse_args()
    if a.self_check:
        self_check()
        return
    if a.check:
        sys.exit(check_mode(a))
    short = a.short
    rounds = a.rounds or (1 if short else 3)
    only = set(a.only.split(","))
    os.makedirs(a.out, exist_ok=True)
    if only == {"traffic"}:
        # Its own files: the other figures stay.
        b = Bench(a)
        b.upload_images()
        b.start_emulator()
        try:
            t = traffic_scenario(b, short)
        finally:
            b.emulator.terminate()
            b.emulator.wait(10)
            b.remove_objects()
        with open(os.path.join(a.out, "traffic.json"), "w") as f:
            json.dump(t, f, indent=1)
        md = render_traffic(t)
        with open(os.path.join(a.out, "traffic.md"), "w") as f:
            f.write(md)
        print(md)
        return
    # The folder holds this run's figures only.
    for f in os.listdir(a.out):
        if f in ("results.json", "results.md", "chart.png") or f.startswith("perf-"):
            os.remove(os.path.join(a.out, f))
    b = Bench(a)
    b.upload_images()
    b.start_emulator()
    r = {"mode": "short" if short else "full", "rounds": rounds,
         "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
         "machine": machine(), "notes": [],
         "throughput": {"bound": littles_bound(128, 0.3), "rust_store": [], "rust_nostore": [],
                        "python": []},
         "cpu": {s: {"rust_store": [], "rust_nostore": [], "python": []} for s in ("200KB", "3MB")},
         "rss": [], "drain": {"jobs": 0, "runs": []}, "instructions": {}}
    kinds = ("rust_store", "rust_nostore", "python")
    try:
        for rnd in range(rounds):
            # Alternate the order too, so drift does not always favour one.
            order = kinds if rnd % 2 == 0 else tuple(reversed(kinds))
            if "throughput" in only:
                for k in order:
                    x = b.run(k, "200KB", 1500 if short else 5000, 128, 300)
                    x["ratio"] = x["rate"] / r["throughput"]["bound"]
                    r["throughput"][k].append(x)
            if "cpu" in only:
                for label, n in (("200KB", 600 if short else 3000), ("3MB", 100 if short else 500)):
                    if a.sizes and label not in a.sizes.split(","):
                        continue
                    for k in order:
                        r["cpu"][label][k].append(b.run(k, label, n, 32, 0))
        if "cpu" in only and not a.no_profile and shutil.which("perf"):
            # Separate, unmeasured runs: perf's own overhead stays out of the figures.
            r["profiles"] = {}
            for label, n in (("200KB", 600 if short else 2000), ("3MB", 100 if short else 300)):
                x = b.run("rust_nostore", label, n, 32, 0, profile=True)
                r["profiles"][label] = x["profile"]
        if "rss" in only:
            for c in (16, 64, 256):
                x = b.run("rust_store", "3MB", 4 * c, c, 500)
                r["rss"].append({"in_flight": c, "image_bytes": 3 * MB, "peak_rss": x["peak_rss"],
                                 "queued": 0})
            for q in (1000, 100_000 if short else 1_000_000):
                t = time.monotonic()
                x = b.run("rust_store", "3MB", q, 64, 500, backlog=True, stop_after=4 * 64)
                r["rss"].append({"in_flight": 64, "image_bytes": 3 * MB, "peak_rss": x["peak_rss"],
                                 "queued": q})
                b.log(f"queue depth {q}: {time.monotonic() - t:.0f}s with enqueue")
            if short:
                r["notes"].append("Short mode queues 100 000 jobs instead of 1 000 000.")
        if "instructions" in only and shutil.which("valgrind"):
            committed = load_instructions()
            r["instructions"]["committed"] = committed["per_job"]
            # 200 KB: the committed workload (for the report's comparison).
            for label, n, repeats in (("200KB", committed["jobs"], committed.get("repeats", 1)),
                                      ("3MB", 10, 1)):
                if a.sizes and label not in a.sizes.split(","):
                    continue
                for k in ("rust_store", "rust_nostore"):
                    r["instructions"].setdefault(k, {})[label] = b.instructions(
                        k, label, n, committed["in_flight"], repeats)
        elif "instructions" in only:
            r["notes"].append("valgrind is not installed: no instruction counts.")
        if "drain" in only:
            n = 1000 if short else 4000
            r["drain"]["jobs"] = n
            for replicas in (1, 3):
                x = b.run("rust_store", "200KB", n, 32, 300, replicas=replicas, backlog=True)
                r["drain"]["runs"].append({"replicas": replicas, "seconds": x["drain_seconds"],
                                           "rate": n / x["drain_seconds"]})
    finally:
        if b.emulator:
            b.emulator.terminate()
            b.emulator.wait(10)
        b.remove_objects()
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(r, f, indent=1)
    md = render_markdown(r)
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write(md)
    render_chart(r, os.path.join(a.out, "chart.png"))
    print(md)


INSTRUCTIONS_FILE = "bench/instructions.json"


def load_instructions():
    with open(os.path.join(HERE, "instructions.json")) as f:
        return json.load(f)


def check_mode(a):
    """`scripts/bench.sh --check`: instructions per job against the committed
    figures; 0 when within tolerance, 1 otherwise."""
    committed = load_instructions()
    if not shutil.which("valgrind"):
        print("bench --check: valgrind is not installed", file=sys.stderr)
        return 1
    b = Bench(a)
    measured = {}
    try:
        b.upload_images(labels=("200KB",))
        b.start_emulator()
        for kind, label in sorted({tuple(k.split("/")[:2]) for k in committed["per_job"]}):
            x = b.instructions(kind, label, committed["jobs"], committed["in_flight"],
                               committed.get("repeats", 1))
            measured[f"{kind}/{label}"] = x["per_job"]
            measured[f"{kind}/{label}/outside-byte-work"] = x["per_job_outside_byte_work"]
    finally:
        if b.emulator:
            b.emulator.terminate()
            b.emulator.wait(10)
        b.remove_objects()
    ok = True
    for key, got, ref, limit, fine in check_instructions(measured, committed):
        ok &= fine
        print(f"instructions per job, {key}: {got:,.0f} measured, {ref:,.0f} committed, "
              f"limit {limit:,.0f} (+{committed['tolerance']:.0%}): "
              f"{'ok' if fine else 'REGRESSION'}")
        if fine and got < ref * (1 - committed["tolerance"]):
            print(f"  {(1 - got / ref):.0%} below the committed figure: "
                  "scripts/bench.sh --check --update-instructions records the gain")
    if a.update_instructions:
        committed["per_job"] = {k: round(v) for k, v in measured.items()}
        committed["measured"] = datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M UTC")
        with open(os.path.join(HERE, "instructions.json"), "w") as f:
            json.dump(committed, f, indent=1)
            f.write("\n")
        print(f"wrote {INSTRUCTIONS_FILE}")
        return 0
    return 0 if ok else 1


if __name__ == "__main__":
    main()
