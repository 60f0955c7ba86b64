"""The Spark engine: the local engine's routing and per-bucket evaluation, run by Apache Spark.

Every line goes through `Router.route` (as in the local partition step), kept lines are grouped by
the same `bucket_of(patient)` and each bucket goes through `screen_patients` in
`groupBy("bucket").applyInPandas`, so both engines give the same rows, in the same order. The rule
pack ships to the executors with `SparkContext.addFile` and is compiled once per Python worker.

Needs the optional extra (`pip install 'cramp-cds[spark]'`: pyspark, pandas, pyarrow) and Java 17+.
The export may be a local folder or manifest.json, or any folder URI Spark's Hadoop file systems read
(`hdfs://`, `s3a://`, `abfss://` with their connectors on the cluster). See docs/screening.md.

Differences from the local engine: no progress bar and no --resume (Spark retries failed tasks
itself); a gzip file that breaks off fails the job rather than becoming an error row.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from cds.screen.export import ExportError, find_export_files
from cds.screen.local import MIN_BUCKETS, default_buckets
from cds.screen.routing import ERROR, KEEP, SHARED, SKIP, Router, bucket_of
from cds.screen.worklist import Summary, open_writer

ROW_SCHEMA = "bucket int, patient string, row string, patients long"
_CACHE: dict[tuple[str, str], Any] = {}  # per Python worker: the Router and Evaluator of a shipped pack


@dataclass
class SparkJob:
    export: str
    now: datetime
    rules: Path
    outputs: Sequence[Path]
    buckets: int | None = None
    master: str = "local[*]"
    workers: int = 2


def _pack_dir(name: str) -> Path:
    from pyspark import SparkFiles

    return Path(SparkFiles.get(name))


def _router(name: str) -> Router:
    if ("router", name) not in _CACHE:
        from cds.rulepack import load_rule_pack

        _CACHE["router", name] = Router(load_rule_pack(_pack_dir(name)))
    router: Router = _CACHE["router", name]
    return router


def _evaluator(name: str) -> Any:
    if ("evaluator", name) not in _CACHE:
        from cds.evaluation import Evaluator
        from cds.rulepack import load_rule_pack

        _CACHE["evaluator", name] = Evaluator(load_rule_pack(_pack_dir(name)))
    return _CACHE["evaluator", name]


def route_lines(
    lines: Iterator[tuple[str, int]], *, file_index: int, name: str, pack: str, buckets: int
) -> Iterator[tuple[str, int, str, str, str, int, int]]:
    """(action, bucket, key, where, payload, file index, line) for each non-blank line of one file."""
    router = _router(pack)
    for text, index in lines:
        raw = text.strip()
        if not raw:
            continue
        where = f"{name}:{index + 1}"
        routed = router.route(raw.encode(), where)
        if routed.action == KEEP:
            assert routed.patient is not None
            yield KEEP, bucket_of(routed.patient, buckets), routed.patient, where, raw, file_index, index
        elif routed.action == SHARED:
            assert routed.patient is not None
            yield SHARED, -1, routed.patient, where, raw, file_index, index
        elif routed.action == SKIP:
            yield SKIP, -1, str(routed.reason), where, "", file_index, index
        elif routed.action == ERROR:
            assert routed.problem is not None
            yield ERROR, -1, "", where, orjson.dumps(routed.problem.as_json()).decode(), file_index, index


def _evaluate_bucket(pack: str, now: datetime, medications: Any) -> Any:
    def evaluate(frame: Any) -> Any:
        import pandas as pd

        from cds.screen.patients import group_by_patient, screen_patients

        bucket = int(frame["bucket"].iloc[0])
        lines = zip(frame["where"], frame["patient"], (r.encode() for r in frame["raw"]), strict=True)
        grouped = group_by_patient(lines)
        rows = screen_patients(grouped, evaluator=_evaluator(pack), now=now, medications=medications.value)
        records = [(bucket, "", "", len(grouped))]
        records += [(bucket, str(row["patient"]), orjson.dumps(row).decode(), 0) for row in rows]
        return pd.DataFrame.from_records(records, columns=["bucket", "patient", "row", "patients"])

    return evaluate


def _export_uris(spark: Any, export: str) -> list[tuple[str, str]]:
    """(uri, file name) of every file of the export, in the local engine's order."""
    if "://" not in export:
        return [(f.path.resolve().as_uri(), f.name) for f in find_export_files(Path(export))]
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    path = jvm.org.apache.hadoop.fs.Path(export)
    fs = path.getFileSystem(conf)
    if export.endswith(".json"):
        document = orjson.loads("\n".join(spark.sparkContext.textFile(export).collect()))
        base = export.rsplit("/", 1)[0]
        urls = [str(e["url"]) for e in document.get("output", []) if isinstance(e, dict) and "url" in e]
        return [(u if "://" in u else f"{base}/{u}", u.rsplit("/", 1)[-1]) for u in urls]
    names = sorted(str(s.getPath().getName()) for s in fs.listStatus(path) if s.isFile())
    found = [
        (f"{export.rstrip('/')}/{n}", n) for n in names if n.endswith((".ndjson", ".ndjson.gz", ".jsonl"))
    ]
    if not found:
        raise ExportError("no .ndjson or .ndjson.gz files", resource=export)
    return found


def start_session(master: str, buckets: int) -> Any:
    """A session whose Python workers run this interpreter (the one with cramp-cds installed).

    `spark.pyspark.python` alone does not reach every worker launcher in local mode (the SQL/Arrow
    path fell back to `python3` here), so PYSPARK_PYTHON is set for the Java process it starts too.
    """
    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.master(master)
        .appName("cramp-cds screen")
        .config("spark.sql.shuffle.partitions", str(buckets))
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
    )
    if master.startswith("local"):
        # On a cluster the executors' Python comes from the packed environment or the image
        # (PYSPARK_PYTHON, spark-defaults.conf; docs/screening.md), never from this machine's path.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        builder = builder.config("spark.ui.enabled", "false").config("spark.pyspark.python", sys.executable)
    return builder.getOrCreate()


def run_spark(job: SparkJob, *, session: Any = None) -> Summary:
    """Screen the export on Spark; write the outputs on the driver; return the summary."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise ExportError(
            "--engine spark needs the optional extra: pip install 'cramp-cds[spark]' (and Java 17+)"
        ) from None
    from cds.rulepack import load_rule_pack

    pack = load_rule_pack(job.rules)
    local = None if "://" in job.export else find_export_files(Path(job.export))
    buckets = job.buckets or (default_buckets(local) if local is not None else MIN_BUCKETS)
    spark = session or start_session(job.master, buckets)
    context = spark.sparkContext
    pack_name = job.rules.resolve().name
    context.addFile(str(job.rules.resolve()), recursive=True)
    uris = _export_uris(spark, job.export)

    def per_file(index: int, uri: str, name: str) -> Any:
        return (
            context.textFile(uri)
            .zipWithIndex()
            .mapPartitions(
                lambda lines, i=index, n=name: route_lines(
                    lines, file_index=i, name=n, pack=pack_name, buckets=buckets
                )
            )
        )

    routed = context.union([per_file(i, uri, name) for i, (uri, name) in enumerate(uris)]).cache()
    try:
        lines = routed.count()
        skipped = dict(
            routed.filter(lambda r: r[0] == SKIP)
            .map(lambda r: (r[2], 1))
            .reduceByKey(lambda a, b: a + b)
            .collect()
        )
        errors = sorted(routed.filter(lambda r: r[0] == ERROR).map(lambda r: (r[5], r[6], r[4])).collect())
        shared = sorted(
            routed.filter(lambda r: r[0] == SHARED).map(lambda r: (r[5], r[6], r[2], r[3], r[4])).collect()
        )
        medications: dict[str, tuple[str, bytes]] = {}
        for _, _, key, where, raw in shared:
            medications.setdefault(key, (where, raw.encode()))
        kept = routed.filter(lambda r: r[0] == KEEP).map(lambda r: (r[1], r[2], r[3], r[4]))
        frame = spark.createDataFrame(kept, "bucket int, patient string, where string, raw string")
        evaluate = _evaluate_bucket(pack_name, job.now, context.broadcast(medications))
        results = frame.groupBy("bucket").applyInPandas(evaluate, schema=ROW_SCHEMA)
        # Rows stream to the driver in worklist order (bucket, then patient id), as the local engine writes them.
        summary = _write(
            job, results.orderBy("bucket", "patient").toLocalIterator(), lines, skipped, errors, pack
        )
    finally:
        routed.unpersist()
        if session is None:
            spark.stop()
    return summary


def _write(
    job: SparkJob, collected: Any, lines: int, skipped: dict[str, int], errors: list[Any], pack: Any
) -> Summary:
    summary = Summary(lines=lines, kept=lines - sum(skipped.values()) - len(errors))
    summary.skipped.update(skipped)
    writers = [open_writer(path, topic_system=pack.manifest.topic_system) for path in job.outputs]
    try:
        for record in collected:
            if not record["row"]:
                summary.patients += int(record["patients"])
                continue
            row = orjson.loads(record["row"])
            summary.add_rows([row], 0)
            for writer in writers:
                writer.write(row)
        for _, _, problem in errors:
            summary.add_line_errors(1)
            for writer in writers:
                writer.write(orjson.loads(problem))
    finally:
        for writer in writers:
            writer.close()
    return summary
