"""Render a benchmark run (latest.json) as Markdown, with each target met or missed and by how much."""

from __future__ import annotations

from typing import Any


def _spread(stat: dict[str, float], fmt: str = "{:.0f}") -> str:
    return f"{fmt.format(stat['median'])} ({fmt.format(stat['min'])}–{fmt.format(stat['max'])})"


def _find_http(
    report: dict[str, Any],
    target: str,
    workers: int,
    size: int,
    conc: int,
    database: str = "sqlite",
    auth: str = "off",
) -> dict[str, Any] | None:
    return next(
        (
            r
            for r in report["http"]
            if (r["target"], r["workers"], r["prefetch_resources"], r["concurrency"])
            == (target, workers, size, conc)
            and (target == "echo" or (r.get("database", "sqlite"), r.get("auth", "off")) == (database, auth))
        ),
        None,
    )


def measured(report: dict[str, Any]) -> dict[str, float | None]:
    inproc = {r["patient"]: r for r in report["inprocess"]}
    ours = _find_http(report, "cramp-assessment", 1, 50, 8)
    echo = _find_http(report, "echo", 1, 50, 8)
    pg = _find_http(report, "cramp-assessment", 1, 50, 8, "postgresql")
    return {
        "inprocess_50_median_us": inproc.get("generated-50", {}).get("median_us"),
        "inprocess_50_p99_us": inproc.get("generated-50", {}).get("p99_us"),
        "inprocess_1000_median_us": inproc.get("generated-1000", {}).get("median_us"),
        "http_50_c8_w1_echo_ratio": (ours["rps"]["median"] / echo["rps"]["median"])
        if ours and echo
        else None,
        "http_50_c8_w1_p99_ms": ours["p99_ms"]["median"] if ours else None,
        "http_50_c8_w1_postgresql_vs_sqlite": (pg["rps"]["median"] / ours["rps"]["median"])
        if ours and pg
        else None,
        "memory_growth_mb": report["server_memory"]["growth_mb"],
        "startup_s": report["startup_s"]["median"],
    }


LOWER_IS_BETTER = {
    "inprocess_50_median_us",
    "inprocess_50_p99_us",
    "inprocess_1000_median_us",
    "http_50_c8_w1_p99_ms",
    "memory_growth_mb",
    "startup_s",
}


def render(report: dict[str, Any], targets: dict[str, float]) -> str:
    m = report["machine"]
    lines = [
        "# cramp-cds benchmark report",
        "",
        f"Run {m['when']} on {m['cpu']} ({m['cores']} cores), Python {m['python']}, {m['platform']}.",
        "Packages: "
        + ", ".join(f"{k} {v}" for k, v in m["packages"].items())
        + f"; load tool {m.get('load_tool', 'hey ' + str(m.get('hey', '?')))}.",
        f"Whole run took {report['elapsed_s']:.0f} s. Figures are medians over repeated runs, spread (min–max) in brackets.",
        "",
        "## Summary against the targets",
        "",
        "| figure | target | measured | verdict |",
        "|---|---|---|---|",
    ]
    got = measured(report)
    for name, target in targets.items():
        value = got.get(name)
        if value is None:
            lines.append(f"| {name} | {target} | not measured | – |")
            continue
        lower = name in LOWER_IS_BETTER
        ok = value <= target if lower else value >= target
        ratio = value / target if target else float("nan")
        verdict = (
            "met"
            if ok
            else (f"missed: {ratio:.2f}× the limit" if lower else f"missed: {ratio:.2f}× the target")
        )
        lines.append(f"| {name} | {'≤' if lower else '≥'} {target} | {value:.3g} | {verdict} |")

    lines += [
        "",
        "## 1. In-process evaluation (one core)",
        "",
        "| patient | resources | median µs | p99 µs | patients/s | parse | validate | normalise | facts | engine | cards |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["inprocess"]:
        s = r["stage_share"]
        shares = " | ".join(
            f"{s.get(k, 0) * 100:.0f} %"
            for k in ("parse", "intake+validate", "normalise", "facts", "engine", "cards")
        )
        lines.append(
            f"| {r['patient']} | {r['resources']} | {r['median_us']:.0f} ({r['median_us_spread'][0]:.0f}–{r['median_us_spread'][1]:.0f}) "
            f"| {r['p99_us']:.0f} ({r['p99_us_spread'][0]:.0f}–{r['p99_us_spread'][1]:.0f}) | {r['patients_per_s']:.0f} | {shares} |"
        )
    lines += [
        "",
        "Stage shares come from cProfile (cumulative time of each stage's function, profiler overhead included).",
        "",
    ]

    lines += [
        "## 2. HTTP on loopback (bench.loadgen, POST /cds-services/cramp-assessment vs bare FastAPI echo)",
        "",
        "Both cycle the same population of distinct generated patients (column `patients`) in the same run. "
        "CPU ms/req is the server processes' user+system CPU time over the requests answered (steadier than "
        "req/s on a shared machine); `load` is the machine's 1-minute load average during the run. "
        "`auth` jwt: the real service (not --dev) with every request carrying its own ES384 client JWT, "
        "signed by the load tool before the measured window.",
        "",
        "| target | db | auth | workers | prefetch | patients | conc. | req/s | CPU ms/req | p50 ms | p99 ms | p99.9 ms | load | requests | non-200 | req/s vs echo | CPU vs echo |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["http"]:
        echo = _find_http(report, "echo", r["workers"], r["prefetch_resources"], r["concurrency"])
        versus = echo is not None and r["target"] != "echo"
        ratio = f"{r['rps']['median'] / echo['rps']['median']:.2f}" if echo and versus else ""
        cpu = r.get("cpu_ms_per_request")
        cpu_ratio = (
            f"{cpu['median'] / echo['cpu_ms_per_request']['median']:.1f}×"
            if echo and versus and cpu and echo.get("cpu_ms_per_request")
            else ""
        )
        load = _spread(r["load_average"], "{:.1f}") if "load_average" in r else ""
        lines.append(
            f"| {r['target']} | {r.get('database') or ''} | {r.get('auth', 'off')} | {r['workers']} "
            f"| {r['prefetch_resources']} "
            f"| {r.get('patients', 1)} | {r['concurrency']} | {_spread(r['rps'])} "
            f"| {_spread(cpu, '{:.2f}') if cpu else ''} "
            f"| {_spread(r['p50_ms'], '{:.1f}')} | {_spread(r['p99_ms'], '{:.1f}')} | {_spread(r['p99.9_ms'], '{:.1f}')} "
            f"| {load} | {r['requests']} | {r['non_200']} | {ratio} | {cpu_ratio} |"
        )
    mem = report["server_memory"]
    inmem = report["inprocess_memory"]
    lines += [
        "",
        "## 3. Memory",
        "",
        f"- Server worker RSS: {mem['rss_after_warmup_mb']:.1f} MB after warm-up, {mem['rss_after_calls_mb']:.1f} MB "
        f"after {mem['calls']} calls (growth {mem['growth_mb']:+.1f} MB).",
        f"- In-process evaluator RSS: {inmem['rss_before_mb']:.1f} MB after warm-up, {inmem['rss_after_mb']:.1f} MB after "
        f"{inmem['evaluations']} evaluations of a {inmem['resources']}-resource patient (growth {inmem['growth_mb']:+.1f} MB); "
        f"live engine sessions afterwards: {inmem['live_sessions']}.",
        "",
        "## 4. Start-up",
        "",
        f"`cds serve --dev` to the first 200 from /readyz: {_spread(report['startup_s'], '{:.2f}')} s.",
        "",
    ]
    if report.get("complexity"):
        from bench.complexity import render_complexity

        lines += render_complexity(report["complexity"], report.get("complexity_when", ""))
    return "\n".join(lines)
