"""Soak: `cds serve` (2 workers) under a steady mixed load, checked for 5xx, wrong answers, memory and lost feedback.

    python -m bench.soak --seconds 600          # what `make soak` runs (SOAK_SECONDS overrides)
    CDS_DATABASE_URL=postgresql+psycopg://... python -m bench.soak   # against PostgreSQL
    python -m bench.soak --jwt                  # JWT on: every request signed (ES384), as EHRs do

Concurrency 32 on loopback, an async httpx client per task. The mix: patient-view hook calls,
order-sign calls (calcium draft: cause cards; another drug: no cards), /evaluate?now= on the fixture
Bundles, feedback on cards actually received, bad requests that must be 4xx, and hostile ones (issue 9:
NUL characters, extreme numbers and date-times, JSON nested deeper than the limit, requests large but
under the limits and one over them) that must be refused with their 4xx or answered right. Every answer is
checked against fixtures/manifest.json: the service evaluates hook calls at the current time, so
their inputs are the fixtures with every date moved forward by (today - the fixture's `now`), which
keeps ages, intervals and recency as the manifest describes them. Writes bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import create_engine, select

from bench.load import free_port, rss_mb, wait_ready
from bench.patients import as_hook_request
from cds.hooks import ORDER_CHECK, TOPICS
from cds.store import FeedbackRow

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
RESULTS = ROOT / "bench" / "results" / "soak.json"
CDS = Path(sys.executable).parent / "cds"
# What calcium-order-check may answer with: the service's own list, so the soak follows the pack.
ORDER_TOPICS = TOPICS[ORDER_CHECK] or frozenset()
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CALCIUM = {"coding": [{"system": RXNORM, "code": "1897"}], "text": "Calcium carbonate 500 mg tablet"}
STATIN = {"coding": [{"system": RXNORM, "code": "83367"}], "text": "atorvastatin"}
# Share of each kind of request in the mix.
MIX = {"patient-view": 30, "order-sign": 15, "evaluate": 18, "feedback": 20, "bad": 9, "hostile": 8}
# "Flat memory": worker RSS may grow by this much from the warmed-up start to the end.
RSS_GROWTH_LIMIT_MB = 40.0

_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2})(.*)$", re.DOTALL)


def shift_dates(value: Any, by: timedelta) -> Any:
    """Every string that starts with a full date, moved by `by` (times and zones kept)."""
    if isinstance(value, dict):
        return {k: shift_dates(v, by) for k, v in value.items()}
    if isinstance(value, list):
        return [shift_dates(v, by) for v in value]
    if isinstance(value, str) and (match := _DATE.match(value)):
        try:
            day = date.fromisoformat(match.group(1))
        except ValueError:
            return value
        return (day + by).isoformat() + match.group(2)
    return value


@dataclass(frozen=True)
class Case:
    name: str
    hook_request: dict[str, Any]  # dates moved to today
    bundle: bytes  # the fixture as written, for /evaluate?now=
    now: str
    topics: frozenset[str]


def load_cases(today: date) -> list[Case]:
    cases = []
    for entry in json.loads((FIXTURES / "manifest.json").read_text(encoding="utf-8")):
        raw = (FIXTURES / entry["file"]).read_bytes()
        document = json.loads(raw)
        if document.get("hook", "patient-view") != "patient-view":
            continue  # order-sign calls are built from every patient-view case (order_sign below)
        moved = shift_dates(document, timedelta(days=(today - date.fromisoformat(entry["now"])).days))
        request = moved if "hook" in moved else as_hook_request(moved)
        cases.append(Case(entry["file"], request, raw, entry["now"], frozenset(entry["expect_topics"])))
    return cases


def order_sign(case: Case, medication: dict[str, Any]) -> dict[str, Any]:
    request = json.loads(json.dumps(case.hook_request))
    patient = request["context"]["patientId"]
    request["hook"] = "order-sign"
    request["context"]["draftOrders"] = {
        "resourceType": "Bundle",
        "entry": [
            {
                "resource": {
                    "resourceType": "MedicationRequest",
                    "id": "draft-1",
                    "status": "draft",
                    "intent": "order",
                    "subject": {"reference": f"Patient/{patient}"},
                    "medicationCodeableConcept": medication,
                }
            }
        ],
    }
    return request


def topics(response: httpx.Response) -> frozenset[str]:
    return frozenset(card["source"]["topic"]["code"] for card in response.json()["cards"])


@dataclass
class Tally:
    requests: Counter[str] = field(default_factory=Counter)  # "kind status"
    wrong: list[str] = field(default_factory=list)
    cards: list[str] = field(default_factory=list)  # uuids received, not yet given feedback
    feedback_sent: int = 0
    feedback_acked: set[tuple[str, str]] = field(default_factory=set)

    def saw(self, kind: str, response: httpx.Response) -> None:
        self.requests[f"{kind} {response.status_code}"] += 1

    def fivexx(self) -> int:
        return sum(n for key, n in self.requests.items() if key.split()[1].startswith("5"))


BAD: list[tuple[str, str, bytes, int]] = [
    ("not-json", "/cds-services/cramp-assessment", b"{not json", 400),
    ("unknown-service", "/cds-services/no-such-service", b"{}", 404),
    ("wrong-hook", "/cds-services/calcium-order-check", b"", 400),  # body: a patient-view request
    ("missing-prefetch", "/cds-services/cramp-assessment", b"", 412),  # body: prefetch key removed
    ("unknown-card", "/cds-services/cramp-assessment/feedback", b"", 400),
    ("bad-now", "/evaluate?now=yesterday", b"", 400),
]


UNREAD_CONDITION = {
    "system": "http://snomed.info/sct",
    "code": "999999999",
    "display": "not read by the rules",
}


def extra_conditions(request: dict[str, Any], count: int, text: str = "not read") -> dict[str, Any]:
    """The request with `count` more Conditions the rules do not read (its answer stays the same)."""
    request = json.loads(json.dumps(request))
    patient = request["context"]["patientId"]
    added = [
        {
            "resource": {
                "resourceType": "Condition",
                "id": f"soak-extra-{i}",
                "clinicalStatus": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                            "code": "active",
                        }
                    ]
                },
                "code": {"coding": [UNREAD_CONDITION], "text": text},
                "subject": {"reference": f"Patient/{patient}"},
            }
        }
        for i in range(count)
    ]
    searchset_entries(request, "conditions").extend(added)
    return request


def searchset_entries(request: dict[str, Any], key: str) -> list[Any]:
    """The entry list of prefetch `key`, made a searchset Bundle first if it was one resource or absent."""
    value = request["prefetch"].get(key)
    if not isinstance(value, dict) or value.get("resourceType") != "Bundle":
        kept = [{"resource": value}] if isinstance(value, dict) else []
        value = request["prefetch"][key] = {"resourceType": "Bundle", "type": "searchset", "entry": kept}
    entries: list[Any] = value.setdefault("entry", [])
    return entries


def extreme_observation(request: dict[str, Any], value: str, when: str) -> bytes:
    """The request with one more vitamin D result whose raw JSON value and time are `value` and `when`."""
    request = json.loads(json.dumps(request))
    patient = request["context"]["patientId"]
    marker = "__soak_value__"
    observation = {
        "resourceType": "Observation",
        "id": "soak-extreme",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "62292-8"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": when,
        "valueQuantity": {
            "value": marker,
            "unit": "ng/mL",
            "system": "http://unitsofmeasure.org",
            "code": "ng/mL",
        },
    }
    searchset_entries(request, "observations").append({"resource": observation})
    return json.dumps(request).replace(f'"{marker}"', value).encode()


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


# name -> statuses that are right for it; "same-answer" cases must also give the case's topics.
HOSTILE: dict[str, frozenset[int]] = {
    "nul-hook-instance": frozenset({400}),
    "nul-in-unread-text": frozenset({200}),  # same answer
    "huge-number": frozenset({200, 400}),
    "tiny-number": frozenset({200, 400}),
    "calendar-edge-dates": frozenset({200, 400}),
    "draft-order-nested-300-deep": frozenset({400}),
    "large-under-the-limits": frozenset({200}),  # same answer, evaluated off the event loop
    "over-the-resource-limit": frozenset({413}),
}
SAME_ANSWER = frozenset({"nul-in-unread-text", "large-under-the-limits"})
_LARGE: dict[tuple[str, int], bytes] = {}


def hostile_body(name: str, case: Case, rng: random.Random) -> tuple[str, bytes]:
    request = dict(case.hook_request, hookInstance=str(uuid.uuid4()))
    path = "/cds-services/cramp-assessment"
    if name == "nul-hook-instance":
        request["hookInstance"] = "soak\u0000" + str(uuid.uuid4())
        return path, json.dumps(request).encode()
    if name == "nul-in-unread-text":
        return path, json.dumps(extra_conditions(request, 1, text="cramp\u0000cramp")).encode()
    if name == "huge-number":
        return path, extreme_observation(
            request, rng.choice(["1e308", "-1e308", "1.7976931348623157e308"]), "2000-01-01"
        )
    if name == "tiny-number":
        return path, extreme_observation(request, rng.choice(["3e-05", "5e-324", "1e-300"]), "2000-01-01")
    if name == "calendar-edge-dates":
        when = rng.choice(["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-01:00", "0001-01-01"])
        return path, extreme_observation(request, "12", when)
    if name == "draft-order-nested-300-deep":
        signed = order_sign(case, CALCIUM)
        signed["context"]["draftOrders"]["entry"][0]["resource"]["note"] = nested(300)
        return "/cds-services/calcium-order-check", json.dumps(signed).encode()
    count = 3000 if name == "large-under-the-limits" else 5001
    key = (case.name, count)
    if key not in _LARGE:  # built once per case: the body is the same but for its hookInstance
        _LARGE[key] = json.dumps(extra_conditions(case.hook_request, count)).encode()
    body = _LARGE[key].replace(
        json.dumps(case.hook_request["hookInstance"]).encode(), json.dumps(str(uuid.uuid4())).encode(), 1
    )
    return path, body


async def one(client: httpx.AsyncClient, rng: random.Random, cases: list[Case], tally: Tally) -> None:
    kind = rng.choices(list(MIX), weights=list(MIX.values()))[0]
    case = rng.choice(cases)
    if kind == "feedback" and not tally.cards:
        kind = "patient-view"
    if kind == "patient-view":
        request = dict(case.hook_request, hookInstance=str(uuid.uuid4()))
        response = await client.post("/cds-services/cramp-assessment", json=request)
        tally.saw(kind, response)
        if response.status_code == 200:
            if topics(response) != case.topics:
                tally.wrong.append(f"{kind} {case.name}: {sorted(topics(response))}")
            tally.cards.extend(card["uuid"] for card in response.json()["cards"])
    elif kind == "order-sign":
        calcium = rng.random() < 0.7
        request = order_sign(case, CALCIUM if calcium else STATIN)
        response = await client.post("/cds-services/calcium-order-check", json=request)
        tally.saw(kind, response)
        expected = case.topics & ORDER_TOPICS if calcium else frozenset()
        if response.status_code == 200 and topics(response) != expected:
            tally.wrong.append(f"{kind} {case.name} calcium={calcium}: {sorted(topics(response))}")
    elif kind == "evaluate":
        response = await client.post(
            f"/evaluate?now={case.now}", content=case.bundle, headers={"Content-Type": "application/json"}
        )
        tally.saw(kind, response)
        if response.status_code == 200 and topics(response) != case.topics:
            tally.wrong.append(f"{kind} {case.name}: {sorted(topics(response))}")
    elif kind == "feedback":
        card = tally.cards.pop(rng.randrange(len(tally.cards)))
        outcome = rng.choice(["accepted", "overridden"])
        entry = {"card": card, "outcome": outcome, "outcomeTimestamp": datetime.now(UTC).isoformat()}
        tally.feedback_sent += 1
        response = await client.post("/cds-services/cramp-assessment/feedback", json={"feedback": [entry]})
        tally.saw(kind, response)
        if response.status_code == 200:
            tally.feedback_acked.add((card, outcome))
        elif response.status_code == 503:
            tally.cards.append(card)  # the client retries later, as Retry-After asks
    elif kind == "hostile":
        name = rng.choice(list(HOSTILE))
        path, body = hostile_body(name, case, rng)
        response = await client.post(path, content=body, headers={"Content-Type": "application/json"})
        tally.saw(f"hostile:{name}", response)
        if response.status_code not in HOSTILE[name]:
            tally.wrong.append(f"hostile:{name} {case.name}: {response.status_code} {response.text[:200]}")
        elif response.status_code == 200 and name in SAME_ANSWER and topics(response) != case.topics:
            tally.wrong.append(f"hostile:{name} {case.name}: {sorted(topics(response))}")
    else:
        name, path, body, status = rng.choice(BAD)
        if name == "wrong-hook":
            body = json.dumps(case.hook_request).encode()
        elif name == "missing-prefetch":
            request = json.loads(json.dumps(case.hook_request))
            del request["prefetch"]["patient"]
            body = json.dumps(request).encode()
        elif name == "unknown-card":
            entry = {
                "card": str(uuid.uuid4()),
                "outcome": "accepted",
                "outcomeTimestamp": "2026-06-01T00:00:00Z",
            }
            body = json.dumps({"feedback": [entry]}).encode()
        elif name == "bad-now":
            body = case.bundle
        response = await client.post(path, content=body, headers={"Content-Type": "application/json"})
        tally.saw(f"bad:{name}", response)
        if response.status_code != status:
            tally.wrong.append(f"bad:{name}: {response.status_code}, expected {status}")


@dataclass
class Signer:
    """A CDS client's ES384 key, trusted by the service through a trusted-issuers file; a fresh JWT per call."""

    iss: str = "https://soak-ehr.example.org"
    kid: str = "soak-key-1"
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP384R1()))

    def write_trusted_issuers(self, path: Path) -> Path:
        public = jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        jwks = {"keys": [{**public, "kid": self.kid, "use": "sig", "alg": "ES384"}]}
        path.write_text(json.dumps({"issuers": [{"iss": self.iss, "jwks": jwks}]}), encoding="utf-8")
        return path

    async def sign(self, request: httpx.Request) -> None:
        now = int(time.time())
        claims = {
            "iss": self.iss,
            "sub": "soak-client",
            "aud": str(request.url.copy_with(query=None)),
            "iat": now,
            "exp": now + 300,
            "jti": str(uuid.uuid4()),
        }
        token = jwt.encode(claims, self.key, algorithm="ES384", headers={"kid": self.kid, "typ": "JWT"})
        request.headers["Authorization"] = f"Bearer {token}"


async def drive(
    base: str,
    seconds: float,
    concurrency: int,
    cases: list[Case],
    tally: Tally,
    seed: int,
    signer: Signer | None = None,
) -> None:
    deadline = time.monotonic() + seconds
    # Drop idle connections before uvicorn does (its keep-alive timeout is 5 s): a request sent on a
    # connection the server is closing at that moment fails with ReadError, a client-side race that
    # the first 10-minute run met 7 times in 146,522 requests.
    limits = httpx.Limits(
        max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=4.0
    )
    hooks = {"request": [signer.sign]} if signer is not None else {}
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits, event_hooks=hooks) as client:

        async def worker(index: int) -> None:
            rng = random.Random(seed * 1000 + index)
            while time.monotonic() < deadline:
                try:
                    await one(client, rng, cases, tally)
                except httpx.TransportError as exc:
                    tally.requests[f"transport {type(exc).__name__}"] += 1

        await asyncio.gather(*(worker(i) for i in range(concurrency)))


def worker_pids(pid: int) -> list[int]:
    """uvicorn's workers: the supervisor's children started by multiprocessing spawn (not its resource tracker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    found = []
    for child in children.read_text().split() if children.exists() else []:
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(int(child))
        except OSError:
            continue
    return sorted(found) or [pid]


def stored_feedback(database_url: str) -> set[tuple[str, str]]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return {
                (row.card_uuid, row.outcome)
                for row in conn.execute(select(FeedbackRow.card_uuid, FeedbackRow.outcome))
            }
    finally:
        engine.dispose()


def run_soak(
    *,
    seconds: float,
    concurrency: int = 32,
    workers: int = 2,
    database_url: str | None = None,
    use_jwt: bool = False,
) -> dict[str, Any]:
    """Start the service, drive it, stop it; return the summary (with `ok` and the failed `checks`)."""
    with tempfile.TemporaryDirectory(prefix="cds-soak-") as tmp:
        url = database_url or f"sqlite:///{Path(tmp) / 'soak.sqlite3'}"
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
        env |= {"CDS_DATABASE_URL": url, "CDS_LOG_LEVEL": "WARNING"}
        signer = Signer() if use_jwt else None
        command = [str(CDS), "serve", "--port", str(port), "--workers", str(workers)]
        if signer is None:
            # --dev evaluates as of the fixtures' day unless told otherwise; the soak moves every date
            # to today, so it needs the machine's clock.
            command += ["--dev", "--now", "real"]
        else:
            env |= {
                "CDS_TRUSTED_ISSUERS": str(signer.write_trusted_issuers(Path(tmp) / "trusted-issuers.json")),
                "CDS_PATIENT_HASH_KEY": uuid.uuid4().hex,
                "CDS_PUBLIC_BASE_URL": base,
            }
        log_path = Path(tmp) / "serve.log"
        with log_path.open("w") as log:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
            try:
                wait_ready(base + "/readyz", timeout_s=60)
                cases = load_cases(datetime.now(UTC).date())
                tally = Tally()
                warmup = min(5.0, seconds / 5)
                began = time.monotonic()
                asyncio.run(drive(base, warmup, concurrency, cases, tally, seed=1, signer=signer))
                pids = worker_pids(process.pid)
                rss_start = {pid: round(rss_mb(pid), 1) for pid in pids}
                asyncio.run(drive(base, seconds - warmup, concurrency, cases, tally, seed=2, signer=signer))
                elapsed = time.monotonic() - began
                rss_end = {pid: round(rss_mb(pid), 1) for pid in worker_pids(process.pid)}
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)
        stored = stored_feedback(url)
        problems = [
            line[:300]
            for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines()
            if '"level":"ERROR"' in line or ('"level":"WARNING"' in line and "DEVELOPMENT MODE" not in line)
        ]
    lost = tally.feedback_acked - stored
    growth = max((rss_end.get(pid, 0.0) - start for pid, start in rss_start.items()), default=0.0)
    same_workers = set(rss_end) == set(rss_start)
    total = sum(tally.requests.values())
    checks = {
        "zero 5xx": tally.fivexx() == 0,
        "zero transport errors": not any(k.startswith("transport") for k in tally.requests),
        "zero wrong answers": not tally.wrong,
        "every acknowledged feedback row stored": not lost,
        f"worker RSS grew less than {RSS_GROWTH_LIMIT_MB} MB": growth < RSS_GROWTH_LIMIT_MB,
        "no worker was replaced": same_workers,
    }
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(elapsed, 1),
        "concurrency": concurrency,
        "workers": workers,
        "store": url.split(":", 1)[0],
        "auth": "jwt" if use_jwt else "off (--dev)",
        "requests": total,
        "requests_per_second": round(total / elapsed, 1),
        "by_kind_and_status": dict(sorted(tally.requests.items())),
        "wrong_answers": tally.wrong[:20],
        "feedback": {
            "sent": tally.feedback_sent,
            "acknowledged": len(tally.feedback_acked),
            "stored": len(stored),
            "acknowledged_but_missing": len(lost),
        },
        "rss_mb": {"start": rss_start, "end": rss_end, "max_growth": round(growth, 1)},
        "server_log_problems": problems[:20],
        "checks": checks,
        "ok": all(checks.values()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", "600")))
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--jwt", action="store_true", default=os.environ.get("SOAK_JWT", "") not in ("", "0"), help="JWT on"
    )
    args = parser.parse_args(argv)
    summary = run_soak(
        seconds=args.seconds,
        concurrency=args.concurrency,
        workers=args.workers,
        database_url=os.environ.get("CDS_DATABASE_URL"),
        use_jwt=args.jwt,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=2))
    print(f"soak {'PASSED' if summary['ok'] else 'FAILED'}; written to {args.out}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
