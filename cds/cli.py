"""The `cds` command: evaluate a file, check and test the rule pack, show the fixture patients.

Bad input exits with status 2 and one paragraph on stderr naming the resource and field; never a traceback.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, NoReturn

import click

from cds.errors import CdsError
from cds.fhirvalues import end_of_day
from cds.hooks import SERVICES
from cds.settings import DEFAULT_RULES_DIR

EXIT_BAD_INPUT = 2
DEV_BASE_URL = "http://127.0.0.1:8000"  # where `make run` serves


def fail(message: str) -> NoReturn:
    click.echo(f"cds: error: {message}", err=True)
    sys.exit(EXIT_BAD_INPUT)


def parse_now(value: str | None) -> datetime:
    """`YYYY-MM-DD` means the end of that UTC day; a full ISO date-time is taken as it is."""
    if value is None:
        return datetime.now(UTC)
    try:
        if len(value) == 10:
            return end_of_day(date.fromisoformat(value))
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        fail(f"--now must be YYYY-MM-DD or an ISO date-time, got {value!r}")
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def load_evaluator(rules: Path) -> Any:
    from cds.evaluation import Evaluator
    from cds.rulepack import load_rule_pack

    try:
        return Evaluator(load_rule_pack(rules))
    except CdsError as exc:
        fail(f"rule pack: {exc}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """cramp-cds: CDS Hooks decision support for muscle cramps after calcium supplements."""


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--now", "now_text", help="Evaluation time, YYYY-MM-DD (end of that UTC day) or ISO date-time.")
@click.option(
    "--service",
    type=click.Choice(SERVICES),
    help="Answer exactly as POST /cds-services/SERVICE would (FILE must be that hook's request).",
)
@click.option(
    "--base-url",
    default=DEV_BASE_URL,
    show_default=True,
    help="The service's URL, for links in cards (the questionnaire's address).",
)
@click.option(
    "--rules", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_RULES_DIR, hidden=True
)
def evaluate(file: Path, now_text: str | None, service: str | None, base_url: str, rules: Path) -> None:
    """Print the CDS Hooks response ({"cards": [...]}) for FILE.

    FILE is a Bundle or a complete hook request, as POST /evaluate takes it: a hook request is answered
    by the service for its hook. With --service the answer is the one POST /cds-services/SERVICE gives,
    errors included. Prefetch keys must all be in the file (nothing is fetched from fhirServer).
    """
    from cds.hooks import Answer, evaluate_call, evaluate_document, read_call, sent_prefetch
    from cds.intake import load_json

    now = parse_now(now_text)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        fail(f"{file}: cannot read ({exc.strerror})")
    evaluator = load_evaluator(rules)
    try:
        if service is None:
            result = evaluate_document(load_json(raw), evaluator=evaluator, now=now, base_url=base_url)
        else:
            call = read_call(load_json(raw), service_id=service, pack=evaluator.pack)
            if call.silent:
                click.echo(json.dumps({"cards": []}, indent=2))
                return
            evaluation = evaluate_call(
                call, sent_prefetch(call), evaluator=evaluator, now=now, base_url=base_url
            )
            result = Answer(cards=evaluation.cards, notes=evaluation.notes)
    except CdsError as exc:
        fail(f"{file}: {exc}")
    for note in result.notes:
        click.echo(f"cds: note: {note}", err=True)
    click.echo(json.dumps(result.response(), indent=2, ensure_ascii=False))


@main.group()
def rules() -> None:
    """Check or test the rule pack."""


@rules.command("check")
@click.option(
    "--rules", "rules_dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_RULES_DIR
)
def rules_check(rules_dir: Path) -> None:
    """Load and validate every file of the rule pack."""
    from cds.hazards import load_hazards

    evaluator = load_evaluator(rules_dir)
    pack = evaluator.pack
    try:
        hazards = load_hazards(pack)
    except CdsError as exc:
        fail(str(exc))
    click.echo(
        f"rule pack {pack.manifest.id} {pack.version}: {len(pack.compiled)} rules in {len(pack.topics)} topics, "
        f"{len(pack.analytes)} analytes, {len(pack.valuesets.conditions)} condition and "
        f"{len(pack.valuesets.medications)} medication value sets, {len(hazards.hazards)} hazards: OK"
    )


@rules.command("test")
@click.option(
    "--rules", "rules_dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_RULES_DIR
)
def rules_test(rules_dir: Path) -> None:
    """Run every rule's own cases (fires / stays silent / boundary)."""
    from cds.cases import run_all_cases

    results = run_all_cases(load_evaluator(rules_dir))
    failed = [r for r in results if not r.passed]
    for result in failed:
        click.echo(f"FAIL {result.name}: {result.message}")
    click.echo(f"{len(results) - len(failed)} of {len(results)} rule cases pass")
    sys.exit(1 if failed else 0)


@rules.command("book")
@click.option(
    "--rules", "rules_dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_RULES_DIR
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the page here (default: stdout).",
)
def rules_book(rules_dir: Path, output: Path | None) -> None:
    """Write the rule book: one static HTML page with every topic, rule, threshold, hazard and case."""
    from cds.book import render_book
    from cds.hazards import load_hazards

    pack = load_evaluator(rules_dir).pack
    try:
        page = render_book(pack, load_hazards(pack))
    except CdsError as exc:
        fail(str(exc))
    if output is None:
        click.echo(page, nl=False)
        return
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(page, encoding="utf-8")
    except OSError as exc:
        fail(f"{output}: {exc.strerror}")
    click.echo(f"rule book written to {output}", err=True)


@rules.command("compile")
@click.option(
    "--rules", "rules_dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_RULES_DIR
)
def rules_compile(rules_dir: Path) -> None:
    """Print the rules as the engine receives them (JSON), for review and for the golden file."""
    pack = load_evaluator(rules_dir).pack
    compiled = [
        {"id": r.id, "topic": r.topic, "patterns": list(r.patterns), "produces": r.produces}
        for r in pack.compiled
    ]
    click.echo(json.dumps({"pack": pack.manifest.id, "version": pack.version, "rules": compiled}, indent=1))


@main.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default=Path("fixtures"))
def demo(directory: Path) -> None:
    """Evaluate the example patients listed in DIRECTORY/manifest.json and print their cards."""
    from cds.hooks import evaluate_document
    from cds.intake import load_json

    evaluator = load_evaluator(DEFAULT_RULES_DIR)
    try:
        manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        fail(f"{directory}/manifest.json: {exc}")
    for item in manifest:
        now = parse_now(item["now"])
        try:
            document = load_json((directory / item["file"]).read_bytes())
            # As `cds evaluate` answers: a hook request by the service for its hook.
            result = evaluate_document(document, evaluator=evaluator, now=now, base_url=DEV_BASE_URL)
        except CdsError as exc:
            fail(f"{item['file']}: {exc}")
        click.secho(f"\n{item['file']}  ({item['title']}, evaluated {item['now']})", bold=True)
        if not result.cards:
            click.echo("  no cards")
        for card in result.cards:
            colour = {"warning": "yellow", "critical": "red"}.get(card["indicator"], "cyan")
            click.echo("  " + click.style(f"[{card['indicator']:7}]", fg=colour) + f" {card['summary']}")
            for suggestion in card.get("suggestions", []):
                click.echo(f"            -> {suggestion['label']}")
            rules_fired = ", ".join(r["rule"] for r in card["extension"]["cramp-cds-explanation"]["rules"])
            click.echo(click.style(f"            rules: {rules_fired}", dim=True))


@main.command("settings")
def settings_command() -> None:
    """Print every setting (CDS_* variable, default, description) as Markdown: docs/settings.md."""
    from cds.settings import settings_document

    click.echo(settings_document(), nl=False)


@main.command()
@click.option("--host", help="Interface to bind (default 127.0.0.1, or CDS_HOST).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (default 8000, or CDS_PORT).")
@click.option("--workers", type=click.IntRange(1, 64), help="Worker processes (default 1, or CDS_WORKERS).")
@click.option(
    "--dev", is_flag=True, help="No authentication, 127.0.0.1 only, SQLite by default: never for real data."
)
@click.option(
    "--now",
    "now_text",
    help="With --dev: evaluate as of this day (YYYY-MM-DD) or 'real' for the machine clock "
    "(default: the fixtures' day, 2026-06-01, so the demo never expires).",
)
def serve(host: str | None, port: int | None, workers: int | None, dev: bool, now_text: str | None) -> None:
    """Run the CDS Hooks service under uvicorn."""
    from pydantic import ValidationError

    from cds.server import LOOPBACK, base_url, bind_problem, run, settings_from
    from cds.settings import FIXTURES_DAY, REPO_ROOT

    if dev and host not in (None, LOOPBACK):
        fail(f"--dev serves without authentication and binds {LOOPBACK} only, not {host}")
    if now_text is not None and not dev:
        fail("--now is for --dev only: a real service evaluates on the machine clock")
    given = {"host": host, "port": port, "workers": workers}
    # Only the flag switches authentication off, whatever CDS_DEV says.
    overrides = {name: str(value) for name, value in given.items() if value is not None}
    overrides["dev"] = "true" if dev else "false"
    if dev:
        # The fixtures' results fall out of the rules' 12-month windows as the calendar moves on, and
        # the printed curl call sends them verbatim: so --dev fixes the evaluation day instead.
        demo_day = FIXTURES_DAY.isoformat() if now_text is None else now_text
        overrides["demo_now"] = "" if demo_day == "real" else demo_day
    else:
        overrides["demo_now"] = ""
    try:
        settings = settings_from(overrides)
    except ValidationError as exc:
        fail("; ".join(str(error["msg"]).removeprefix("Value error, ") for error in exc.errors()))
    url = base_url(settings)
    problem = bind_problem(settings.host, settings.port)
    if problem is not None:
        fail(
            f"cannot listen on {settings.host} port {settings.port}: {problem}. Stop what uses it, or choose "
            f"another port: `make run PORT={settings.port + 1 if settings.port < 65535 else 8001}` "
            "(or `cds serve --port N`, or CDS_PORT)."
        )
    if settings.dev:
        click.secho(
            "WARNING: --dev: JWT authentication is OFF; serving on 127.0.0.1 only. Never use it with real "
            "patient data.",
            fg="red",
            bold=True,
            err=True,
        )
    example = REPO_ROOT / "fixtures" / "hook-request.json"
    if example.is_relative_to(Path.cwd()):
        example = example.relative_to(Path.cwd())
    click.echo(f"cramp-cds {'(dev) ' if settings.dev else ''}on {url}  discovery: {url}/cds-services")
    if settings.dev:
        click.echo(
            "try:  curl -s -X POST -H 'Content-Type: application/json' "
            f"--data @{example} {url}/cds-services/cramp-assessment"
        )
    if settings.demo_now is not None:
        click.echo(
            f"demo clock: every call is evaluated as of {settings.demo_now.date()} (the fixtures' day; "
            "each answer carries a CDS-Demo-Now header); --now real for the machine clock"
        )
    try:
        run(settings)
    except ValueError as exc:
        fail(str(exc))


@main.command()
@click.option("--aud", help="The exact URL the token is for, e.g. http://127.0.0.1:8000/cds-services.")
@click.option(
    "--trusted-issuers",
    "print_issuers",
    is_flag=True,
    help="Print instead a trusted-issuers YAML naming this issuer (for CDS_TRUSTED_ISSUERS).",
)
@click.option("--iss", default=None, help="Issuer (default urn:cramp-cds:dev-issuer).")
@click.option("--tenant", default=None, help="Optional tenant claim.")
@click.option(
    "--lifetime", type=click.IntRange(1, 3600), default=300, show_default=True, help="Seconds until exp."
)
@click.option(
    "--key-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the issuer's key is kept (default var/dev-issuer; created on first use).",
)
def token(
    aud: str | None,
    print_issuers: bool,
    iss: str | None,
    tenant: str | None,
    lifetime: int,
    key_dir: Path | None,
) -> None:
    """Dev only: sign a CDS Hooks JWT (ES384) with a local test issuer's key, for a service with auth on.

    Never trust this issuer in a real deployment: its key is a plain file on this machine.
    """
    from datetime import timedelta

    import yaml

    from cds.devissuer import DEV_ISSUER, load_or_create_key, mint, trusted_issuers_entry
    from cds.settings import REPO_ROOT

    try:
        key = load_or_create_key(key_dir or REPO_ROOT / "var" / "dev-issuer")
    except (OSError, ValueError) as exc:
        fail(f"dev issuer key: {exc}")
    if print_issuers:
        document = trusted_issuers_entry(key, iss=iss or DEV_ISSUER)
        click.echo("# Dev only: the local test issuer of `cds token`. Never in a real deployment.")
        click.echo(yaml.safe_dump(document, sort_keys=False), nl=False)
        return
    if not aud:
        fail("--aud URL is required: the exact URL the token will be sent to")
    if not aud.startswith(("http://", "https://")):
        fail(f"--aud must be the http(s) URL the token will be sent to, got {aud!r}")
    now = datetime.now(UTC)
    click.echo(
        mint(
            key, aud=aud, now=now, iss=iss or DEV_ISSUER, lifetime=timedelta(seconds=lifetime), tenant=tenant
        )
    )


@main.group()
def feedback() -> None:
    """What clinicians did with the cards (the alert-fatigue watch)."""


@feedback.command("report")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def feedback_report(as_json: bool) -> None:
    """Per service and topic: cards issued, accepted, overridden, and the override reasons."""
    from cds.settings import Settings
    from cds.store import Store, StoreUnavailableError

    # Only the database URL is read here; the serving safety checks (hash key, issuers) do not apply.
    store = Store(Settings(dev=True).database_url)
    try:
        store.migrate()
        rows = store.report()
    except StoreUnavailableError as exc:
        fail(f"store: {exc}")
    finally:
        store.close()
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "service": row.service_id,
                        "topic": row.topic,
                        "issued": row.issued,
                        "accepted": row.accepted,
                        "overridden": row.overridden,
                        "overrideReasons": [
                            {"system": r.system, "code": r.code, "count": r.count}
                            for r in row.override_reasons
                        ],
                    }
                    for row in rows
                ],
                indent=2,
            )
        )
        return
    if not rows:
        click.echo("no cards issued yet")
        return
    click.echo(
        f"{'service':<22} {'topic':<22} {'issued':>6} {'accepted':>8} {'overridden':>10}  override reasons"
    )
    for row in rows:
        reasons = ", ".join(f"{r.code or '(none)'} x{r.count}" for r in row.override_reasons)
        click.echo(
            f"{row.service_id:<22} {row.topic:<22} {row.issued:>6} {row.accepted:>8} {row.overridden:>10}  {reasons}"
        )


@main.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--patients", type=click.IntRange(1), required=True, help="How many patients to write.")
@click.option("--seed", type=int, default=1, show_default=True, help="The same seed gives the same export.")
@click.option(
    "--as-of", "as_of", default="2026-06-01", show_default=True, help="Results are dated before this day."
)
@click.option(
    "--templates",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder of whole-record Bundles to copy backgrounds from (default: ../shared/fhir-examples/bundles "
    "when present, else fixtures/).",
)
@click.option(
    "--background",
    type=click.IntRange(-1),
    default=60,
    show_default=True,
    help="Resources kept per patient from its template record (-1: the whole record).",
)
@click.option("--files-per-type", type=click.IntRange(1, 999), default=1, show_default=True)
@click.option("--gzip", "compress", is_flag=True, help="Write .ndjson.gz files.")
@click.option(
    "--rules", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_RULES_DIR, hidden=True
)
def synth(
    out_dir: Path,
    patients: int,
    seed: int,
    as_of: str,
    templates: Path | None,
    background: int,
    files_per_type: int,
    compress: bool,
    rules: Path,
) -> None:
    """Write a synthetic population as a FHIR Bulk Data export (NDJSON per type and manifest.json)."""
    from cds.settings import REPO_ROOT
    from cds.synth import load_templates, write_export

    try:
        day = date.fromisoformat(as_of)
    except ValueError:
        fail(f"--as-of must be YYYY-MM-DD, got {as_of!r}")
    if templates is None:
        shared = REPO_ROOT.parent / "shared" / "fhir-examples" / "bundles"
        templates = shared if shared.is_dir() else REPO_ROOT / "fixtures"
    found = load_templates(templates)
    if not found:
        fail(f"{templates}: no Bundle with exactly one Patient to build patients from")
    pack = load_evaluator(rules).pack
    summary = write_export(
        out_dir,
        patients=patients,
        seed=seed,
        pack=pack,
        templates=found,
        source=f"{templates.name} ({len(found)} records)",
        as_of=day,
        background=background,
        files_per_type=files_per_type,
        compress=compress,
    )
    total = sum(summary.lines.values())
    click.echo(
        f"{out_dir}: {patients} patients, {total} resources in {len(summary.files)} files "
        f"(templates: {summary.source}; seed {seed})",
        err=True,
    )


@main.command()
@click.argument("export")
@click.option("--now", "now_text", help="Evaluation time, YYYY-MM-DD (end of that UTC day) or ISO date-time.")
@click.option(
    "--out",
    "outputs",
    type=click.Path(dir_okay=False, path_type=Path),
    multiple=True,
    required=True,
    help="worklist.csv, worklist.ndjson, or worklist.json (a FHIR Bundle of draft ServiceRequests and Tasks); "
    "repeat for several.",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "spark"]),
    default="local",
    show_default=True,
    help="spark: Apache Spark (pip install 'cramp-cds[spark]'); EXPORT may then be any URI Spark reads.",
)
@click.option("--spark-master", default="local[*]", show_default=True, help="With --engine spark.")
@click.option("--workers", type=click.IntRange(1, 512), help="Processes (default: the machine's cores).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its finished buckets.")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bar on stderr (default: on when stderr is a terminal).",
)
@click.option(
    "--work-dir", type=click.Path(file_okay=False, path_type=Path), help="Default: <first --out>.work"
)
@click.option(
    "--buckets", type=click.IntRange(1, 100_000), help="Partitions (default: from the export's size)."
)
@click.option("--keep-work", is_flag=True, help="Keep the work folder after a successful run.")
@click.option(
    "--rules", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_RULES_DIR, hidden=True
)
def screen(
    export: str,
    now_text: str | None,
    outputs: tuple[Path, ...],
    engine: str,
    workers: int | None,
    resume: bool,
    progress: bool | None,
    work_dir: Path | None,
    buckets: int | None,
    keep_work: bool,
    spark_master: str,
    rules: Path,
) -> None:
    """Screen every patient of a FHIR Bulk Data export (a folder of NDJSON files or its manifest.json).

    One worklist row per patient with cards; patients without cards are counted. A line, resource or
    patient that cannot be read becomes an error row naming it. The summary goes to stderr.
    """
    import os

    from cds.screen.export import ExportError
    from cds.screen.worklist import check_output

    now = parse_now(now_text)
    for path in outputs:
        try:
            check_output(path)
        except ValueError as exc:
            fail(str(exc))
        if not path.parent.is_dir():
            fail(f"{path}: the folder {path.parent} does not exist")
    if engine == "spark" and resume:
        fail("--resume is for the local engine; Spark retries failed tasks itself")
    show = sys.stderr.isatty() if progress is None else progress
    cores = os.cpu_count() or 1
    try:
        if engine == "spark":
            from cds.screen.spark import SparkJob, run_spark

            summary = run_spark(
                SparkJob(
                    export=export,
                    now=now,
                    rules=rules,
                    outputs=outputs,
                    buckets=buckets,
                    master=spark_master,
                    workers=workers or cores,
                )
            )
        else:
            from cds.screen.local import Job, run_local

            summary = run_local(
                Job(
                    export=Path(export),
                    now=now,
                    rules=rules,
                    outputs=outputs,
                    workers=workers or cores,
                    work=work_dir or outputs[0].with_name(outputs[0].name + ".work"),
                    resume=resume,
                    buckets=buckets,
                    progress=show,
                    keep_work=keep_work,
                )
            )
    except ExportError as exc:
        fail(str(exc))
    except CdsError as exc:
        fail(f"rule pack: {exc}")
    except OSError as exc:
        fail(f"{exc.filename or 'work folder'}: {exc.strerror}")
    except KeyboardInterrupt:
        click.echo("cds: interrupted; run the same command with --resume to continue", err=True)
        sys.exit(130)
    click.echo(summary.text(), err=True)
