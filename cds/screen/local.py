"""The one-machine engine: stream the export once into bucket files, evaluate buckets in a process pool.

Work folder (default: next to the first output, `<out>.work/`):

    job.json                what this run is (export files and sizes, --now, rule pack digest, buckets)
    buckets/NNNN.ndjson     the kept lines of the patients hashed to bucket NNNN (see patients.bucket_line)
    medications.ndjson      Medication resources, which orders of any bucket may refer to
    partition.json          written last by the partition step: line counts, line errors, patients per bucket
    results/NNNN.json       one bucket's rows and counts, renamed into place when complete

Memory is bounded by one bucket per worker, whatever the export's size. `--resume` keeps a finished
partition and every finished bucket, so an interrupted run (Ctrl-C, SIGKILL, a reboot) continues
where it stopped and writes the same worklist an uninterrupted run would.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import multiprocessing
import os
import resource as rlimit
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import orjson

from cds.screen.export import ExportError, ExportFile, find_export_files, read_lines
from cds.screen.patients import bucket_line, group_by_patient, read_bucket_line, screen_patients
from cds.screen.routing import ERROR, KEEP, SHARED, SKIP, Problem, Router, bucket_of
from cds.screen.worklist import Summary, open_writer

BUCKET_INPUT_BYTES = 32 * 1024 * 1024  # about this much export (uncompressed) per bucket
GZIP_RATIO = 8  # a gzipped NDJSON file holds about this many times its size
MIN_BUCKETS = 64  # enough for a smooth progress bar and for a pool of many workers
MAX_BUCKETS = 1024
BUFFER = 64 * 1024


@dataclass
class Job:
    export: Path
    now: datetime
    rules: Path
    outputs: Sequence[Path]
    workers: int
    work: Path
    resume: bool = False
    buckets: int | None = None
    progress: bool = False
    keep_work: bool = False
    log: Callable[[str], None] = field(default=lambda message: print(message, file=sys.stderr))


def pack_digest(rules: Path) -> str:
    """A digest of every file of the rule pack: a resumed run must use the very same pack."""
    digest = hashlib.sha256()
    for path in sorted(p for p in rules.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(rules)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def default_buckets(files: Sequence[ExportFile]) -> int:
    """From the export's size only (not the workers), so that the row order of a worklist, which is by
    bucket and then patient id, is the same for the same export whatever engine or pool size ran it."""
    size = sum(f.size * (GZIP_RATIO if f.path.name.endswith(".gz") else 1) for f in files)
    limit = MAX_BUCKETS
    try:
        soft, _ = rlimit.getrlimit(rlimit.RLIMIT_NOFILE)
        if soft > 0:
            limit = min(limit, soft - 64)
    except (ValueError, OSError):
        pass
    return max(1, min(limit, max(MIN_BUCKETS, math.ceil(size / BUCKET_INPUT_BYTES))))


def run_local(job: Job) -> Summary:
    """Screen the export; write every output; return the summary. ExportError if the export is unreadable."""
    from cds.rulepack import load_rule_pack

    pack = load_rule_pack(job.rules)
    files = find_export_files(job.export)
    buckets = job.buckets or default_buckets(files)
    identity = {
        "export": [[str(f.path.resolve()), f.size, f.type] for f in files],
        "now": job.now.isoformat(),
        "pack": pack_digest(job.rules),
        "buckets": buckets,
    }
    _prepare(job, identity)
    clock = [time.perf_counter()]
    stats = _partition_once(job, files, Router(pack), buckets)
    clock.append(time.perf_counter())
    pending = [b for b in range(buckets) if not _result_path(job.work, b).exists()]
    if job.resume and len(pending) < buckets:
        job.log(f"cds: resuming: {buckets - len(pending)} of {buckets} buckets already done")
    _evaluate(job, pending, stats)
    clock.append(time.perf_counter())
    summary = _write_outputs(job, buckets, stats, pack.manifest.topic_system)
    clock.append(time.perf_counter())
    # Kept with --keep-work for the benchmark (bench/screen.py): wall seconds of each step.
    seconds = dict(
        zip(("partition", "evaluate", "write"), (b - a for a, b in itertools.pairwise(clock)), strict=True)
    )
    record = summary.as_json() | {"seconds": seconds, "buckets": buckets, "workers": job.workers}
    (job.work / "summary.json").write_bytes(orjson.dumps(record, option=orjson.OPT_INDENT_2))
    if not job.keep_work:
        shutil.rmtree(job.work, ignore_errors=True)
    return summary


def _prepare(job: Job, identity: dict[str, Any]) -> None:
    marker = job.work / "job.json"
    if job.resume and marker.exists():
        before = orjson.loads(marker.read_bytes())
        for key in ("export", "now", "pack", "buckets"):
            if before.get(key) != identity[key]:
                raise ExportError(
                    f"cannot resume: the interrupted run had another {key}; run again without --resume",
                    resource=str(marker),
                    field=key,
                )
        return
    if job.work.exists():
        shutil.rmtree(job.work)
    (job.work / "results").mkdir(parents=True)
    marker.write_bytes(orjson.dumps(identity, option=orjson.OPT_INDENT_2))


def _result_path(work: Path, bucket: int) -> Path:
    return work / "results" / f"{bucket:04d}.json"


def _bucket_path(work: Path, bucket: int) -> Path:
    return work / "buckets" / f"{bucket:04d}.ndjson"


def _partition_once(job: Job, files: Sequence[ExportFile], router: Router, buckets: int) -> dict[str, Any]:
    done = job.work / "partition.json"
    if done.exists():
        stats: dict[str, Any] = orjson.loads(done.read_bytes())
        return stats
    shutil.rmtree(job.work / "buckets", ignore_errors=True)
    (job.work / "buckets").mkdir()
    stats = partition(files, router, job.work, buckets, progress=job.progress)
    tmp = done.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(stats))
    os.replace(tmp, done)
    return stats


def partition(
    files: Sequence[ExportFile], router: Router, work: Path, buckets: int, *, progress: bool = False
) -> dict[str, Any]:
    """Stream every line once; keep what the rules read, each in its patient's bucket file."""
    handles: list[IO[bytes]] = [_bucket_path(work, b).open("wb", buffering=BUFFER) for b in range(buckets)]
    patients_per_bucket = [0] * buckets
    skipped: dict[str, int] = {}
    errors: list[dict[str, Any]] = []
    lines = kept = 0
    bar = _bar(progress, total=sum(f.size for f in files), unit="B", desc="partition", unit_scale=True)
    try:
        with (work / "medications.ndjson").open("wb") as medications:
            for file in files:
                name = file.name
                try:
                    for number, raw in read_lines(file):
                        lines += 1
                        where = f"{name}:{number}"
                        routed = router.route(raw, where)
                        if routed.action == KEEP:
                            assert routed.patient is not None
                            bucket = bucket_of(routed.patient, buckets)
                            handles[bucket].write(bucket_line(where, routed.patient, raw))
                            kept += 1
                            if routed.kind == "Patient":
                                patients_per_bucket[bucket] += 1
                        elif routed.action == SHARED:
                            assert routed.patient is not None
                            medications.write(bucket_line(where, routed.patient, raw))
                            kept += 1
                        elif routed.action == SKIP:
                            assert routed.reason is not None
                            skipped[routed.reason] = skipped.get(routed.reason, 0) + 1
                        elif routed.action == ERROR:
                            assert routed.problem is not None
                            errors.append(routed.problem.as_json())
                except ExportError as exc:
                    errors.append(Problem(where=f"{name}", message=exc.message).as_json())
                bar.update(file.size)
    finally:
        bar.close()
        for handle in handles:
            handle.close()
    return {
        "lines": lines,
        "kept": kept,
        "skipped": skipped,
        "errors": errors,
        "patientsPerBucket": patients_per_bucket,
    }


# --- evaluation ---------------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(rules: str, now: str, work: str, ignore_sigint: bool) -> None:
    """Once per process: load and compile the pack, read the shared Medications."""
    from cds.evaluation import Evaluator
    from cds.rulepack import load_rule_pack

    if ignore_sigint:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the pool
    medications: dict[str, tuple[str, bytes]] = {}
    with (Path(work) / "medications.ndjson").open("rb") as handle:
        for line in handle:
            where, key, raw = read_bucket_line(line)
            medications.setdefault(key, (where, raw))
    _WORKER.update(
        evaluator=Evaluator(load_rule_pack(Path(rules))),
        now=datetime.fromisoformat(now),
        work=Path(work),
        medications=medications,
    )


def screen_bucket(bucket: int) -> tuple[int, int]:
    """Evaluate one bucket file; write its result file atomically. Returns (bucket, patients)."""
    work: Path = _WORKER["work"]
    with _bucket_path(work, bucket).open("rb") as handle:
        grouped = group_by_patient(read_bucket_line(line) for line in handle)
    rows = screen_patients(
        grouped, evaluator=_WORKER["evaluator"], now=_WORKER["now"], medications=_WORKER["medications"]
    )
    target = _result_path(work, bucket)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(orjson.dumps({"patients": len(grouped), "rows": rows}))
    os.replace(tmp, target)
    return bucket, len(grouped)


def _evaluate(job: Job, pending: list[int], stats: dict[str, Any]) -> None:
    per_bucket: list[int] = stats["patientsPerBucket"]
    done_before = sum(n for b, n in enumerate(per_bucket) if b not in set(pending))
    bar = _bar(job.progress, total=sum(per_bucket), unit="patient", desc="evaluate", initial=done_before)
    args = (str(job.rules), job.now.isoformat(), str(job.work))
    try:
        if not pending:
            return
        if job.workers == 1:
            _init_worker(*args, False)
            for bucket in pending:
                _, patients = screen_bucket(bucket)
                bar.update(patients)
            return
        context = multiprocessing.get_context("spawn")
        pool = context.Pool(min(job.workers, len(pending)), initializer=_init_worker, initargs=(*args, True))
        try:
            for _, patients in pool.imap_unordered(screen_bucket, pending):
                bar.update(patients)
            pool.close()
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.join()
    finally:
        bar.close()


def _write_outputs(job: Job, buckets: int, stats: dict[str, Any], topic_system: str) -> Summary:
    summary = Summary(lines=stats["lines"], kept=stats["kept"])
    summary.skipped.update(stats["skipped"])
    writers = [open_writer(path, topic_system=topic_system) for path in job.outputs]
    try:
        for row, patients in _result_rows(job.work, buckets):
            if row is not None:
                summary.add_rows([row], 0)
                for writer in writers:
                    writer.write(row)
            summary.patients += patients
        for row in stats["errors"]:
            summary.add_line_errors(1)
            for writer in writers:
                writer.write(row)
    finally:
        for writer in writers:
            writer.close()
    return summary


def _result_rows(work: Path, buckets: int) -> Iterator[tuple[dict[str, Any] | None, int]]:
    for bucket in range(buckets):
        result = orjson.loads(_result_path(work, bucket).read_bytes())
        yield None, int(result["patients"])
        for row in result["rows"]:
            yield row, 0


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(enabled: bool, **options: Any) -> Any:
    """A tqdm bar on stderr (patients done, rate, time left), or a silent stand-in."""
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    # shutil falls back to 80x24 where the terminal reports a size of 0 (tqdm would then draw nothing)
    size = shutil.get_terminal_size()
    return tqdm(file=sys.stderr, ncols=size.columns, nrows=size.lines, smoothing=0.1, **options)
