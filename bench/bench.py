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
    out += ["", "## Rust and Python side by side (same run, alternating)", "",
            "| measure | Rust (store on) | Rust (no store) | Python (no store) |",
            "|---|---|---|---|"]

    def trio(rows, f, key):
        return [f(median([x.get(key) for x in rows[k]])) if rows[k] else "–"
                for k in ("rust_store", "rust_nostore", "python")]

    ratio_f = (lambda v: "–" if v is None else f"{v:.2f} ({v * bound:.0f} jobs/s)")
    out.append("| throughput / bound (128 in flight, 300 ms) | "
               + " | ".join(trio(t, ratio_f, "ratio")) + " |")
    for part in ("fetch", "vendor", "total"):
        f = (lambda v: "–" if v is None else f"{v:.0f} ms")
        for q in ("p50", "p99"):
            vals = []
            for k in ("rust_store", "rust_nostore", "python"):
                xs = [x.get("timings_ms", {}).get(part, {}) for x in t[k]]
                vals.append(f(median([x.get(q) for x in xs if x])) if t[k] else "–")
            out.append(f"| timings_ms.{part} {q} in that run | " + " | ".join(vals) + " |")
    out.append("| mean timings_ms.total in that run | " + " | ".join(
        f"{median([x.get('timings_ms', {}).get('total', {}).get('mean') for x in t[k]]):.0f} ms"
        if t[k] and median([x.get('timings_ms', {}).get('total', {}).get('mean') for x in t[k]])
        else "–" for k in ("rust_store", "rust_nostore", "python")) + " |")
    out.append("| peak RSS in that run | "
               + " | ".join(trio(t, lambda v: "–" if v is None else fmt_bytes(v), "peak_rss"))
               + " |")
    for size_key in ("200KB", "3MB"):
        c = r["cpu"][size_key]
        out.append(f"| CPU per job, {size_key} (0 ms) | "
                   + " | ".join(trio(c, lambda v: "–" if v is None else fmt_us(v), "cpu_per_job"))
                   + " |")
        out.append(f"| peak RSS, {size_key} run (32 in flight) | "
                   + " | ".join(trio(c, lambda v: "–" if v is None else fmt_bytes(v), "peak_rss"))
                   + " |")
    if any(t[k] for k in ("rust_store", "rust_nostore", "python")):
        out += ["", "## Where the machine's CPU went in the throughput runs", "",
                "CPU time per job of each process during the measured window (medians of the "
                "rounds), and how busy the machine's cores were.", "",
                "| process | Rust (store on) | Rust (no store) | Python (no store) |",
                "|---|---|---|---|"]
        ms = lambda v: "–" if v is None else f"{v * 1e3:.2f} ms"  # noqa: E731
        out.append("| the worker | " + " | ".join(trio(t, ms, "cpu_per_job")) + " |")
        for name in ("rabbitmq", "garage", "emulator", "everything else"):
            vals = []
            for k in ("rust_store", "rust_nostore", "python"):
                v = median([x.get("others_cpu_per_job", {}).get(name) for x in t[k]])
                vals.append(ms(v))
            out.append(f"| {name} | " + " | ".join(vals) + " |")
        out.append("| machine busy | " + " | ".join(
            trio(t, lambda v: "–" if v is None else f"{v * 100:.0f}% of {r['machine']['cores']} cores",
                 "machine_busy")) + " |")
    d = r["drain"]
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
    out += ["", "Raw figures of every run: results.json. Chart: chart.png.", ""]
    return "\n".join(out)


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
        out.append(f"| budget raised to {b['raised_to']:,} (restart): results, submissions in all, "
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    colors = {"rust_store": "#b7410e", "rust_nostore": "#e08a5a", "python": "#3572a5"}
    labels = {"rust_store": "Rust (store)", "rust_nostore": "Rust (no store)",
              "python": "Python"}
    ax = axes[0]
    t = r["throughput"]
    keys = [k for k in ("rust_store", "rust_nostore", "python") if t[k]]
    vals = [median([x["ratio"] for x in t[k]]) for k in keys]
    ax.bar([labels[k] for k in keys], vals, color=[colors[k] for k in keys])
    ax.axhline(0.95, color="k", ls="--", lw=1, label="bar 0.95")
    ax.set_ylim(0, 1.05)
    ax.set_title("Throughput / Little's-law bound\n128 in flight, 300 ms, 200 KB")
    ax.legend(loc="upper right")
    ax = axes[1]
    width = 0.27
    sizes = ["200KB", "3MB"]
    for i, k in enumerate(("rust_store", "rust_nostore", "python")):
        vals = [median([x["cpu_per_job"] for x in r["cpu"][s][k]]) for s in sizes]
        vals = [v * 1e3 if v is not None else 0 for v in vals]
        ax.bar([j + (i - 1) * width for j in range(2)], vals, width, color=colors[k],
               label=labels[k])
    for j, s in enumerate(sizes):
        bar = cpu_bar_s(200 * KB if s == "200KB" else 3 * MB) * 1e3
        ax.hlines(bar, j - 1.5 * width, j + 1.5 * width, color="k", ls="--", lw=1)
    ax.set_yscale("log")
    ax.set_xticks(range(2), ["200 KB", "3 MB"])
    ax.set_ylabel("ms CPU per job (log)")
    ax.set_title("Worker CPU per job, 0 ms latency\n(dashed: bar)")
    ax.legend(fontsize=8)
    ax = axes[2]
    rows = r["rss"]
    names = [f"{x['in_flight']}" + (f"\n{x['queued']:,} q" if x.get("queued") else "")
             for x in rows]
    ax.bar(names, [x["peak_rss"] / MB for x in rows], color=colors["rust_store"],
           label="peak RSS")
    ax.plot(names, [rss_bar_bytes(x["in_flight"], x["image_bytes"]) / MB for x in rows],
            "k_", ms=30, mew=2, label="bar")
    ax.set_yscale("log")
    ax.set_ylabel("MB (log)")
    ax.set_title("Rust peak RSS, 3 MB images\nby jobs in flight (and queued)")
    ax.legend(fontsize=8)
    fig.suptitle(f"liveness-worker benchmark, {r['date']}, {r['machine']['cores']} cores "
                 f"({r['machine']['cpu']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


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

    def upload_images(self):
        for size, label, count in ((200 * KB, "200KB", 8), (3 * MB, "3MB", 4)):
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
            "LIVENESS_TELEMETRY__LISTEN": "",
            "LIVENESS_TELEMETRY__LOG_FORMAT": "json",
        })
        env.pop("RUST_LOG", None)
        return env

    def spawn(self, kind, env, tag):
        cmd = ([self.a.worker_bin, "run"] if kind.startswith("rust")
               else [self.a.python, os.path.join(HERE, "python_worker.py")])
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
        for e in ("jobs_exchange", "results_exchange", "dead_exchange"):
            self.ch.exchange_delete(n[e])

    def run(self, kind, label, jobs, concurrency, latency_ms, replicas=1, backlog=False,
            stop_after=None, profile=False):
        """One measured run. kind: rust_store, rust_nostore or python.
        backlog: jobs are queued before the workers start (drain, queue
        depth); else they are published once the workers consume, between the
        two CPU readings."""
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
        procs = [self.spawn(kind, env, f"{prefix}-{kind}-{i}") for i in range(replicas)]
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
            profile_rows = self.finish_perf(*perf) if perf else None
            for p in procs:
                p.send_signal(signal.SIGTERM)
            timings = self.timings(names["results_queue"]) if not stop_after else {}
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
            self.cleanup(prefix)
        out = {"kind": kind, "image": label, "jobs": jobs, "in_flight": concurrency,
               "latency_ms": latency_ms, "replicas": replicas, "seconds": t1 - t0,
               "drain_seconds": t1 - t_start, "rate": window_rate(samples, target),
               "cpu_seconds": cpu, "cpu_per_job": cpu / target, "peak_rss": peak,
               "timings_ms": timings, "others_cpu_per_job": shares,
               "machine_busy": machine_busy, "profile": profile_rows}
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
    stop(x["procs"])
    sub_mid, _ = b.vendor_calls()
    dead = b.depth(names["dead_queue"])[0]
    t0 = time.monotonic()
    raised = 100 * budget
    procs, _ = start(prefix, dict(park, LIVENESS_TRAFFIC__ARGOS__DAILY_BUDGET=str(raised)))
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
    ap.add_argument("--only", default="throughput,cpu,rss,drain")
    ap.add_argument("--run-timeout", type=float, default=900)
    ap.add_argument("--sizes", help="cpu scenario image sizes (default: 200KB,3MB)")
    ap.add_argument("--no-profile", action="store_true",
                    help="skip the perf profiles of the Rust worker's CPU per job")
    ap.add_argument("--perf", action="store_true",
                    help="profile the Rust worker's CPU runs with perf; reports go to --out")
    a = ap.parse_args()
    if a.self_check:
        self_check()
        return
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
         "rss": [], "drain": {"jobs": 0, "runs": []}}
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


if __name__ == "__main__":
    main()
