"""Benchmark OneCollectorHandler against the stdlib and Azure Monitor handlers.

One command runs every scenario on this machine, each in a fresh process,
against one loopback sink that runs in a process of its own, then prints a
table, the ratios and a PASS/FAIL verdict per target, and writes JSON::

    python benchmarks/run.py            # full run, several minutes
    python benchmarks/run.py --quick    # under a minute; what CI runs
    python benchmarks/run.py --profile  # py-spy profile of OneCollectorHandler

See benchmarks/README.md for what each column means.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from typing import Any, Dict, Iterator, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_JSON = os.path.join(HERE, "results", "latest.json")

#: Targets, as ratios measured in the same run.
CALLER_OVERHEAD_MAX = 0.75
CPU_PER_DELIVERED_MAX = 3.0
DOWN_RSS_MAX_MIB = 64.0

Scenario = Dict[str, Any]


def plan(quick: bool, repeat: int) -> List[Scenario]:
    """The scenarios of one run, in order."""
    burst = 20_000
    compare_deadline = 8.0 if quick else 120.0
    stall = compare_deadline if quick else 35.0
    ours = "onecollector"
    scenarios: List[Scenario] = [
        _scenario("null", "NullHandler", "null", burst, repeat=repeat),
        _scenario("queue", "QueueHandler", "queue", burst, repeat=repeat),
        _scenario(
            "queue+http",
            "QueueHandler+HTTPHandler",
            "queue+http",
            burst,
            deadline_s=compare_deadline,
            stall_s=stall,
        ),
        _scenario(
            "azure",
            "Azure Monitor exporter via OTel",
            "azure",
            burst,
            deadline_s=compare_deadline,
            stall_s=stall,
            needs="azure.monitor.opentelemetry.exporter",
        ),
        _scenario(
            ours,
            "OneCollectorHandler",
            "onecollector",
            burst,
            deadline_s=30.0 if quick else 120.0,
            stall_s=30.0 if quick else 60.0,
            repeat=repeat,
        ),
    ]
    if not quick and _importable("orjson"):
        scenarios.append(
            _scenario(
                "onecollector-json",
                "OneCollectorHandler",
                "onecollector",
                burst,
                deadline_s=120.0,
                stall_s=60.0,
                repeat=repeat,
                extra_args=["--no-orjson"],
            )
        )
    if not quick:
        scenarios.append(
            _scenario(
                "onecollector-burst",
                "OneCollectorHandler, 200k burst",
                "onecollector",
                200_000,
                deadline_s=300.0,
                stall_s=60.0,
            )
        )
    scenarios.append(
        _scenario(
            "onecollector-down",
            "OneCollectorHandler, collector down",
            "onecollector",
            50_000 if quick else 1_000_000,
            down=True,
        )
    )
    return scenarios


def _scenario(
    key: str,
    label: str,
    handler: str,
    records: int,
    *,
    deadline_s: float = 120.0,
    stall_s: float = 35.0,
    repeat: int = 1,
    down: bool = False,
    needs: Optional[str] = None,
    extra_args: Optional[List[str]] = None,
) -> Scenario:
    return {
        "key": key,
        "label": label,
        "handler": handler,
        "records": records,
        "deadline_s": deadline_s,
        "stall_s": stall_s,
        "repeat": repeat,
        "down": down,
        "needs": needs,
        "extra_args": extra_args or [],
    }


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# -- processes ---------------------------------------------------------------


@contextlib.contextmanager
def sink_process() -> Iterator[int]:
    """Start the sink in its own process; yield its port."""
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "sink.py")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "PORT":
            raise RuntimeError(f"the sink did not start: {line!r}")
        yield int(line[1])
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def dead_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound, never listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


def sink_call(port: int, path: str, method: str = "GET") -> Dict[str, Any]:
    data = b"" if method == "POST" else None
    url = f"http://127.0.0.1:{port}{path}"
    request = urllib.request.Request(url, method=method, data=data)
    with urllib.request.urlopen(request, timeout=30) as answer:
        result: Dict[str, Any] = json.loads(answer.read() or b"{}")
        return result


def run_worker(
    scenario: Scenario, port: int, workdir: str, *, wrap: Optional[List[str]] = None
) -> Dict[str, Any]:
    """Run one scenario once in a fresh process; return its raw result."""
    sink_call(port, "/reset", "POST")
    out = os.path.join(workdir, f"{scenario['key']}-{time.monotonic_ns()}.json")
    with contextlib.ExitStack() as stack:
        down = stack.enter_context(dead_port()) if scenario["down"] else 0
        command = [
            sys.executable,
            os.path.join(HERE, "scenarios.py"),
            scenario["handler"],
            "--records",
            str(scenario["records"]),
            "--port",
            str(port),
            "--down-port",
            str(down),
            "--deadline-s",
            str(scenario["deadline_s"]),
            "--stall-s",
            str(scenario["stall_s"]),
            "--out",
            out,
            *scenario["extra_args"],
        ]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (ROOT, env.get("PYTHONPATH", "")) if p
        )
        limit = scenario["deadline_s"] + 300.0
        try:
            proc = subprocess.run(
                (wrap or []) + command,
                env=env,
                capture_output=True,
                text=True,
                timeout=limit,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": f"no result within {limit:.0f} s"}
    if not os.path.exists(out):
        tail = (proc.stderr or "").strip().splitlines()[-3:]
        return {"ok": False, "error": f"exit {proc.returncode}: {' | '.join(tail)}"}
    with open(out, encoding="utf-8") as file:
        result: Dict[str, Any] = json.load(file)
    if proc.stderr.strip():
        result["stderr_tail"] = proc.stderr.strip().splitlines()[-5:]
    return result


# -- measurements ---------------------------------------------------------------


def derive(raw: Dict[str, Any]) -> Dict[str, Any]:
    """Per-record figures from one worker's raw result."""
    n = raw["records"]
    delivered = raw.get("delivered")
    handled = n if delivered is None else delivered
    elapsed = raw["done_at"] - raw["start_at"]
    # With the collector down nothing flows end to end.
    flowing = not raw.get("down")
    derived = {
        "caller_us": raw["caller_s"] / n * 1e6,
        "caller_cpu_us": raw["caller_cpu_s"] / n * 1e6,
        "cpu_us_per_delivered": raw["cpu_s"] / handled * 1e6 if handled else None,
        "delivered_fraction": None if delivered is None else delivered / n,
        "e2e_s": elapsed,
        "records_per_s": handled / elapsed
        if flowing and handled and elapsed > 0
        else None,
        "peak_rss_delta_mib": _minus(raw.get("peak_rss_mib"), raw["baseline_rss_mib"]),
    }
    # The NullHandler call timed in the same process, before and after.
    references = [raw.get("null_before_us"), raw.get("null_after_us")]
    if all(references):
        null_us = statistics.fmean(references)
        derived["null_us"] = null_us
        derived["caller_x_null"] = derived["caller_us"] / null_us
        cpu = derived["cpu_us_per_delivered"]
        derived["cpu_x_null"] = None if cpu is None else cpu / null_us
    # The handler's own threads start with the burst: their whole CPU is its.
    for name, seconds in (raw.get("thread_cpu_s") or {}).items():
        for role in ("batcher", "sender"):
            if name.endswith("-" + role) and handled:
                derived[f"{role}_cpu_us"] = seconds / handled * 1e6
    return derived


def _minus(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None else a - b


_MEDIAN_KEYS = (
    "null_us",
    "caller_x_null",
    "cpu_x_null",
    "caller_us",
    "caller_cpu_us",
    "batcher_cpu_us",
    "sender_cpu_us",
    "cpu_us_per_delivered",
    "delivered_fraction",
    "e2e_s",
    "records_per_s",
    "peak_rss_delta_mib",
)


def measure_all(
    scenarios: List[Scenario], port: int, workdir: str
) -> List[Dict[str, Any]]:
    """Run every scenario; repeats go in rounds, so that a change in the load of
    the machine falls on every handler alike rather than on one of them."""
    runs: Dict[str, List[Dict[str, Any]]] = {s["key"]: [] for s in scenarios}
    failed: Dict[str, str] = {}
    for scenario in scenarios:
        if scenario["needs"] and not _importable(scenario["needs"]):
            failed[scenario["key"]] = "skipped"
    rounds = max((s["repeat"] for s in scenarios), default=0)
    for round_no in range(rounds):
        for scenario in scenarios:
            key = scenario["key"]
            if round_no >= scenario["repeat"] or key in failed:
                continue
            print(
                f"[{round_no + 1}/{rounds}] {key} ({scenario['records']:,} records)",
                flush=True,
            )
            raw = run_worker(scenario, port, workdir)
            if raw.get("ok"):
                raw.update(derive(raw))
            else:
                failed[key] = raw.get("error", "failed")
            runs[key].append(raw)
    return [summarize(s, runs[s["key"]], failed.get(s["key"])) for s in scenarios]


def summarize(
    scenario: Scenario, runs: List[Dict[str, Any]], failure: Optional[str]
) -> Dict[str, Any]:
    """One table row: medians over the runs, their spread, the last run's facts."""
    entry: Dict[str, Any] = {k: scenario[k] for k in ("key", "label", "records")}
    entry["runs"] = runs
    if failure == "skipped":
        entry["skipped"] = (
            f"{scenario['needs']} is not installed "
            "(pip install -r benchmarks/requirements.txt)"
        )
        return entry
    if failure is not None:
        entry["error"] = failure
        return entry
    entry["spread"] = {}
    for key in _MEDIAN_KEYS:
        values = [r[key] for r in runs if r.get(key) is not None]
        entry[key] = statistics.median(values) if values else None
        if len(values) > 1:
            entry["spread"][key] = [min(values), max(values)]
    last = runs[-1]
    json_module = (last.get("subject") or {}).get("orjson_loaded")
    if json_module is not None:
        entry["label"] += " [orjson]" if json_module else " [json]"
    for key in ("delivered", "complete", "stalled", "deadline_hit", "subject"):
        entry[key] = last.get(key)
    entry["baseline_rss_mib"] = last["baseline_rss_mib"]
    return entry


# -- targets ------------------------------------------------------------------


def evaluate(
    results: Dict[str, Dict[str, Any]], quick: bool, *, partial: bool = False
) -> List[Dict[str, Any]]:
    """The four targets of the suite, each with its measured value and verdict.

    :param partial: only some scenarios were asked for (``--only``): a target
        whose scenarios did not run is SKIP rather than FAIL.
    """
    null, queue = results.get("null", {}), results.get("queue", {})
    ours = results.get("onecollector", {})
    burst = results.get("onecollector" if quick else "onecollector-burst", {})
    down = results.get("onecollector-down", {})
    targets = [
        _caller_target(null, queue, ours),
        _cpu_target(null, ours),
        _burst_target(burst),
        _down_target(down),
    ]
    for target in targets:
        if partial and target["value"] is None:
            target.update(shown="not run (--only)", verdict="SKIP")
    return targets


def _usable(*entries: Dict[str, Any]) -> bool:
    return all(e and "error" not in e and "skipped" not in e for e in entries)


def _caller_target(
    null: Dict[str, Any], queue: Dict[str, Any], ours: Dict[str, Any]
) -> Dict[str, Any]:
    target: Dict[str, Any] = {
        "name": "caller overhead vs QueueHandler",
        "rule": "(ours - Null) / (QueueHandler - Null), caller-thread us/record,"
        " with Null the NullHandler call timed in the same process, at most"
        f" {CALLER_OVERHEAD_MAX}",
    }
    if not _usable(null, queue, ours) or not _measured("caller_x_null", queue, ours):
        return _unmeasured(target)
    ratio = _overhead(queue, ours)
    rounds = [_overhead(q, o) for q, o in zip(queue["runs"], ours["runs"])]
    # The same ratio with the NullHandler scenario's figure, for comparison.
    absolute = (ours["caller_us"] - null["caller_us"]) / (
        queue["caller_us"] - null["caller_us"]
    )
    target.update(per_round=rounds, absolute=absolute)
    shown = f"{ratio:.2f}{_range(rounds)}; across processes {absolute:.2f}"
    return _verdict(target, ratio, ratio <= CALLER_OVERHEAD_MAX, shown)


def _measured(key: str, *entries: Dict[str, Any]) -> bool:
    return all(e.get(key) for e in entries)


def _overhead(queue: Dict[str, Any], ours: Dict[str, Any]) -> float:
    # Each caller cost is a multiple of the NullHandler call timed in its own
    # process: what each handler adds to that call, at one machine speed.
    return float((ours["caller_x_null"] - 1) / (queue["caller_x_null"] - 1))


def _range(values: List[float]) -> str:
    if len(values) < 2:
        return ""
    return f" (round by round {min(values):.2f} to {max(values):.2f})"


def _cpu_target(null: Dict[str, Any], ours: Dict[str, Any]) -> Dict[str, Any]:
    target: Dict[str, Any] = {
        "name": "process CPU per delivered record vs a NullHandler call",
        "rule": "ours CPU us/delivered / the NullHandler call timed in the same"
        f" process, at most {CPU_PER_DELIVERED_MAX}",
    }
    if not _usable(null, ours) or not _measured("cpu_x_null", ours):
        return _unmeasured(target)
    ratio = ours["cpu_x_null"]
    rounds = [o["cpu_x_null"] for o in ours["runs"]]
    absolute = ours["cpu_us_per_delivered"] / null["caller_us"]
    target.update(per_round=rounds, absolute=absolute)
    shown = f"{ratio:.2f}{_range(rounds)}; across processes {absolute:.2f}"
    return _verdict(target, ratio, ratio <= CPU_PER_DELIVERED_MAX, shown)


def _burst(entry: Dict[str, Any]) -> str:
    records = entry.get("records")
    return f"burst of {records:,}" if records else "burst"


def _burst_target(burst: Dict[str, Any]) -> Dict[str, Any]:
    target: Dict[str, Any] = {
        "name": f"{_burst(burst)} delivered, default settings",
        "rule": "every record counted by the sink, nothing dropped",
    }
    if not _usable(burst):
        return _unmeasured(target)
    stats = (burst.get("subject") or {}).get("stats") or {}
    dropped = sum((stats.get("dropped") or {}).values())
    delivered = burst.get("delivered") or 0
    passed = delivered >= burst["records"] and dropped == 0
    shown = f"{delivered:,}/{burst['records']:,} delivered, {dropped:,} dropped"
    return _verdict(target, delivered / burst["records"], passed, shown)


def _down_target(down: Dict[str, Any]) -> Dict[str, Any]:
    target: Dict[str, Any] = {
        "name": f"{_burst(down)} with the collector down",
        "rule": f"peak RSS at most {DOWN_RSS_MAX_MIB:.0f} MiB above baseline; every"
        " record in the cache or dropped against the cache bound",
    }
    if not _usable(down):
        return _unmeasured(target)
    facts = down.get("subject") or {}
    accounted = facts.get("cache_records", 0) + facts.get("dropped_cache_bound", 0)
    other = sum((facts.get("dropped_other") or {}).values())
    rss = down.get("peak_rss_delta_mib")
    passed = (
        rss is not None
        and rss <= DOWN_RSS_MAX_MIB
        and accounted == down["records"]
        and other == 0
    )
    shown = (
        f"RSS +{rss:.1f} MiB; {facts.get('cache_records', 0):,} cached +"
        f" {facts.get('dropped_cache_bound', 0):,} over the bound ="
        f" {accounted:,}/{down['records']:,}; other drops {other:,}"
    )
    return _verdict(target, rss, passed, shown)


def _verdict(
    target: Dict[str, Any], value: Optional[float], passed: bool, shown: str
) -> Dict[str, Any]:
    target.update(value=value, shown=shown, verdict="PASS" if passed else "FAIL")
    return target


def _unmeasured(target: Dict[str, Any]) -> Dict[str, Any]:
    target.update(value=None, shown="not measured", verdict="FAIL")
    return target


def ratios(results: Dict[str, Dict[str, Any]]) -> Dict[str, Optional[float]]:
    """Informative ratios between handlers of the same run."""
    ours = results.get("onecollector", {})
    out: Dict[str, Optional[float]] = {}
    for key in ("null", "queue", "queue+http", "azure", "onecollector-json"):
        other = results.get(key, {})
        if not _usable(ours, other):
            continue
        out[f"caller_us ours/{key}"] = _ratio(ours["caller_us"], other["caller_us"])
        out[f"cpu_us_per_delivered ours/{key}"] = _ratio(
            ours.get("cpu_us_per_delivered"), other.get("cpu_us_per_delivered")
        )
        out[f"records_per_s ours/{key}"] = _ratio(
            ours.get("records_per_s"), other.get("records_per_s")
        )
    return out


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or not b else a / b


# -- report ---------------------------------------------------------------------


def machine() -> Dict[str, Any]:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    memory = None
    with (
        contextlib.suppress(OSError, ValueError),
        open("/proc/meminfo", encoding="utf-8") as f,
    ):
        memory = int(f.readline().split()[1]) // (1024 * 1024)
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "cpus_usable": usable,
        "memory_gib": memory,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "orjson_installed": _importable("orjson"),
    }


def _load_average() -> Optional[List[float]]:
    # Other processes on the machine inflate every figure; the load average
    # tells the reader how quiet it was.
    if not hasattr(os, "getloadavg"):
        return None
    return [round(x, 2) for x in os.getloadavg()]


_COLUMNS: Tuple[Tuple[str, str, int], ...] = (
    ("scenario", "label", 45),
    ("records", "records", 9),
    ("Null us", "null_us", 8),
    ("caller us/rec", "caller_us", 13),
    ("caller CPU us", "caller_cpu_us", 13),
    ("CPU us/deliv.", "cpu_us_per_delivered", 13),
    ("delivered", "delivered_fraction", 9),
    ("records/s", "records_per_s", 10),
    ("peak RSS +MiB", "peak_rss_delta_mib", 13),
)


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "delivered_fraction":
        return f"{value:.1%}"
    if key == "records":
        return f"{value:,}"
    if key == "records_per_s":
        return f"{value:,.0f}"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def table(entries: List[Dict[str, Any]]) -> str:
    lines = [
        " ".join(
            title.rjust(w) if i else title.ljust(w)
            for i, (title, _, w) in enumerate(_COLUMNS)
        )
    ]
    lines.append("-" * len(lines[0]))
    for entry in entries:
        label = entry["label"][: _COLUMNS[0][2]]
        if "skipped" in entry or "error" in entry:
            why = entry.get("skipped") or f"error: {entry['error']}"
            lines.append(f"{label.ljust(_COLUMNS[0][2])} skipped: {why}"[:160])
            continue
        cells = [label.ljust(_COLUMNS[0][2])]
        for _, key, width in _COLUMNS[1:]:
            cells.append(_cell(key, entry.get(key)).rjust(width))
        notes = []
        if entry.get("stalled"):
            notes.append("stalled")
        if entry.get("deadline_hit"):
            notes.append("deadline")
        lines.append(" ".join(cells) + (f"  ({', '.join(notes)})" if notes else ""))
    return "\n".join(lines)


def report(document: Dict[str, Any]) -> str:
    info = document["machine"]
    head = (
        f"{document['mode']} run, {info['cpu_model']}, {info['cpus_usable']} usable"
        f" CPUs, Python {info['python']}, orjson installed: {info['orjson_installed']}"
    )
    load = document.get("load_average") or {}
    if load.get("before"):
        head += (
            f"\nload average (1, 5, 15 min) before {load['before']},"
            f" after {load['after']}; medians of repeated runs"
        )
    parts = [head, "", table(document["scenarios"]), "", "Targets:"]
    for target in document["targets"]:
        parts.append(f"  [{target['verdict']}] {target['name']}: {target['shown']}")
        parts.append(f"         ({target['rule']})")
    threads = [
        f"  {e['label']}: caller {e['caller_cpu_us']:.1f}, batcher"
        f" {e['batcher_cpu_us']:.1f}, sender {e['sender_cpu_us']:.1f}"
        for e in document["scenarios"]
        if e.get("batcher_cpu_us") is not None and e.get("sender_cpu_us") is not None
    ]
    if threads:
        parts += ["", "CPU us per record by thread:", *threads]
    if document["ratios"]:
        parts += ["", "Ratios (ours / other):"]
        parts += [
            f"  {name}: {value:.2f}"
            for name, value in document["ratios"].items()
            if value is not None
        ]
    return "\n".join(parts)


# -- profile --------------------------------------------------------------------

#: Stage of a sampled stack: the first marker met walking from the leaf up.
_STAGES = (
    ("compression", ("compress (", "zlib", "gzip")),
    ("time formatting", ("format_time (", "_time_of (", "._time (")),
    ("JSON encoding of data", ("json/", "dumps (", "_plain_numbers (")),
    ("envelope assembly (rest of serialize)", ("_envelope.py",)),
    ("kill-window check (reads kill.json)", ("kill_until (", "KillWindow.")),
    ("disk cache (spill and drain)", ("DiskCache.", "_cache.py", "Claim.")),
    ("HTTP (requests, urllib3, http.client)", ("requests/", "urllib3/", "http/")),
    ("retry wrapper (tenacity, deliver)", ("tenacity/", "_transport.py")),
    ("capture on the caller's thread", ("_record.py", "_values.py")),
    ("emit and queue put, other", ("handler.py", "Pipeline.put")),
    ("pipeline threads, other", ("_batcher.py", "threading.py")),
    ("stdlib logging call (LogRecord, findCaller...)", ("logging/__init__.py",)),
    ("benchmark loop", ("scenarios.py",)),
)
#: Frames of the scenario's set-up (imports, handler creation): not measured.
_SETUP_MARKERS = ("make_onecollector (", "_find_and_load (")
_PROFILE_RATE_HZ = 250


def profile(args: argparse.Namespace, port: int, workdir: str) -> int:
    """Sample a OneCollectorHandler burst with py-spy; summarize by stage."""
    pyspy = _find_tool("py-spy")
    if pyspy is None:
        print("py-spy is not installed: pip install -r benchmarks/requirements.txt")
        return 1
    records = 20_000 if args.quick else 200_000
    scenario = _scenario(
        "profile",
        "OneCollectorHandler",
        "onecollector",
        records,
        deadline_s=300.0,
        stall_s=60.0,
    )
    results_dir = os.path.dirname(os.path.abspath(args.json))
    os.makedirs(results_dir, exist_ok=True)
    raw_path = os.path.join(results_dir, "profile-raw.txt")
    # --gil samples the thread holding the GIL: where the interpreter spends
    # CPU, leaving out threads that wait on a lock, a socket or a timer. Code
    # that releases the GIL (zlib, file and socket writes) is undercounted.
    wrap = [pyspy, "record", "--gil", "--rate", str(_PROFILE_RATE_HZ)]
    wrap += ["--format", "raw", "-o", raw_path, "--"]
    raw = run_worker(scenario, port, workdir, wrap=wrap)
    if not raw.get("ok") or not os.path.exists(raw_path):
        print(f"profiled run failed: {raw.get('error')}")
        return 1
    raw.update(derive(raw))
    summary = summarize_profile(raw_path, records)
    summary += "\n\n" + stage_table(port, workdir, records)
    summary += (
        "\n\nProfiled run (slowed by sampling):"
        f" caller {raw['caller_us']:.1f} us/record,"
        f" process CPU {raw['cpu_us_per_delivered']:.1f} us per delivered record,"
        f" {raw['delivered']:,}/{records:,} delivered,"
        f" handler stats {raw['subject'].get('stats')}"
    )
    path = os.path.join(results_dir, "profile.txt")
    with open(path, "w", encoding="utf-8") as out:
        out.write(summary + "\n")
    print(summary)
    print(f"\nwritten: {path} (collapsed stacks: {raw_path})")
    return 0


def stage_table(port: int, workdir: str, records: int) -> str:
    """Each stage of our handler timed alone, on one thread, per record."""
    scenario = _scenario("stages", "stages", "stages", min(records, 20_000))
    raw = run_worker(scenario, port, workdir)
    if not raw.get("ok"):
        return f"stage costs: failed ({raw.get('error')})"
    costs: Dict[str, float] = raw["us_per_record"]
    lines = [
        f"Stages timed one by one on one thread (process CPU, {raw['records']:,}"
        f" records, {raw['batch']} per request or cached batch):"
    ]
    lines += [f"  {value:6.2f} us  {name}" for name, value in costs.items()]
    return "\n".join(lines)


def _find_tool(name: str) -> Optional[str]:
    beside = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.exists(beside):
        return beside
    return shutil.which(name)


def summarize_profile(raw_path: str, records: int) -> str:
    """Shares of GIL samples by stage and by function, and microseconds per record."""
    stages: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = setup = 0
    with open(raw_path, encoding="utf-8") as file:
        for line in file:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            samples = int(count)
            if any(marker in stack for marker in _SETUP_MARKERS):
                setup += samples
                continue
            raw_frames = stack.split(";")
            frames = [_function(f) for f in raw_frames]
            total += samples
            stages[_stage(raw_frames)] += samples
            for name in set(frames):
                inclusive[name] += samples
            own[frames[-1]] += samples
    if not total:
        return "no samples"
    per_record = 1e6 / _PROFILE_RATE_HZ / records

    def row(name: str, n: int) -> str:
        return f"  {n / total:6.1%} {n * per_record:6.2f} us  {name}"

    lines = [
        f"{total} samples of the thread holding the GIL ({_PROFILE_RATE_HZ} Hz),"
        f" burst of {records:,} records; {setup} samples of set-up left out.",
        "",
        "By stage (share, microseconds per record):",
    ]
    lines += [row(name, n) for name, n in stages.most_common()]
    lines += ["", "Functions by inclusive share (top 30):"]
    lines += [row(name, n) for name, n in inclusive.most_common(30)]
    lines += ["", "Functions by own share (top 25):"]
    lines += [row(name, n) for name, n in own.most_common(25)]
    return "\n".join(lines)


def _function(frame: str) -> str:
    # "name (path/to/file.py:123)" -> "name (to/file.py)"
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0].rstrip(")")
    return f"{name} ({'/'.join(path.split('/')[-2:])})" if path else name


def _stage(frames: List[str]) -> str:
    for frame in reversed(frames):
        for stage, markers in _STAGES:
            if any(marker in frame for marker in markers):
                return stage
    return "other"


# -- main ---------------------------------------------------------------------


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark OneCollectorHandler against other logging handlers."
    )
    parser.add_argument(
        "--quick", action="store_true", help="a run of under a minute (CI)"
    )
    parser.add_argument("--json", default=DEFAULT_JSON, help="where to write JSON")
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when a target fails"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="runs of the cheap scenarios, medians reported (default: 7)",
    )
    parser.add_argument(
        "--only", default="", help="comma-separated scenario keys to run"
    )
    parser.add_argument(
        "--profile", action="store_true", help="profile our handler with py-spy"
    )
    args = parser.parse_args(argv)
    repeat = args.repeat or 7
    scenarios = plan(args.quick, repeat)
    if args.only:
        wanted = set(args.only.split(","))
        known = {s["key"] for s in scenarios}
        if wanted - known:
            parser.error(
                f"--only: unknown scenario {', '.join(sorted(wanted - known))}"
                f" (known: {', '.join(sorted(known))})"
            )
        scenarios = [s for s in scenarios if s["key"] in wanted]
    started = time.monotonic()
    with sink_process() as port, tempfile.TemporaryDirectory() as workdir:
        if args.profile:
            return profile(args, port, workdir)
        load_before = _load_average()
        entries = measure_all(scenarios, port, workdir)
    results = {e["key"]: e for e in entries}
    document: Dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "duration_s": round(time.monotonic() - started, 1),
        "machine": machine(),
        "load_average": {"before": load_before, "after": _load_average()},
        "scenarios": entries,
        "targets": evaluate(results, args.quick, partial=bool(args.only)),
        "ratios": ratios(results),
    }
    print()
    print(report(document))
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w", encoding="utf-8") as out:
        json.dump(document, out, indent=1, default=str)
    print(f"\nwritten: {args.json} ({document['duration_s']} s)")
    failed = [t for t in document["targets"] if t["verdict"] == "FAIL"]
    return 1 if args.strict and failed else 0


if __name__ == "__main__":
    sys.exit(main())
