"""Fetch CDS Hooks prefetch data from the EHR's FHIR server when the client did not send it."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx
import orjson

__all__ = ["FhirFetchError", "fetch_prefetch", "fill_template"]

#: Upper bound on the size of one response body (one page of a search), in bytes.
DEFAULT_MAX_PAGE_BYTES = 32 * 1024 * 1024
#: Upper bound on all the bytes fetched for one request: every key, every page.
DEFAULT_MAX_TOTAL_BYTES = 64 * 1024 * 1024


class _ByteBudget:
    """Bytes left for the whole fetch, shared by the keys' fetchers (one event loop: no lock needed)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, count: int) -> bool:
        self.used += count
        return self.used <= self.limit


# Prefetch tokens derived from context.userId (CDS Hooks 2.0, "Prefetch tokens").
_USER_TOKENS = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}
_TOKEN_RE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_CONTEXT_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# Characters allowed in the bearer token we put in a header (RFC 6750 b64token plus a little slack).
_TOKEN_CHARS_RE = re.compile(r"[\x21-\x7e]+")


class FhirFetchError(Exception):
    """A prefetch key could not be fetched from the FHIR server.

    ``key`` names the prefetch key, ``reason`` is a short machine-readable code and ``detail``
    is safe text: it never contains the access token, request URLs or response bodies.
    Reasons: timeout, http_status, not_json, not_bundle, not_resource, too_many_entries,
    page_loop, too_many_pages, too_large, next_origin, bad_query, unreachable, transport.
    The reasons in LIMIT_REASONS mean the data is larger than the service accepts (a 413, as if the
    client had sent it), the others that it could not be had (412).
    """

    # Set by cds.prefetch.resolve_prefetch: how the key came to need fetching.
    why_missing = "was not sent"

    def __init__(self, key: str, reason: str, detail: str = "") -> None:
        self.key = key
        self.reason = reason
        self.detail = detail
        text = f"prefetch {key!r}: {reason}"
        super().__init__(f"{text}: {detail}" if detail else text)


LIMIT_REASONS = frozenset({"too_many_entries", "too_many_pages", "too_large"})


def _encode(value: str, *, keep_slash: bool) -> str:
    """Percent-encode one substituted value, refusing dot segments that could move the path."""
    parts = value.split("/") if keep_slash else [value]
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError("prefetch token value is empty or not a valid id")
    return "/".join(quote(part, safe="") for part in parts)


def _token_value(name: str, context: Mapping[str, str]) -> str:
    if name.startswith("context."):
        field = name[len("context.") :]
        if not _CONTEXT_NAME_RE.fullmatch(field):
            raise ValueError(f"unsupported prefetch token {{{{{name}}}}}")
        value = context.get(field)
        if not value:
            raise ValueError(f"prefetch token {{{{{name}}}}} has no value in the hook context")
        # context.userId is a reference such as "Practitioner/123": keep its single slash.
        return _encode(value, keep_slash=field == "userId")
    if name in _USER_TOKENS:
        direct = context.get(name)
        if direct:
            return _encode(direct, keep_slash=False)
        user = context.get("userId", "")
        kind, _, ident = user.partition("/")
        if kind != _USER_TOKENS[name] or not ident or "/" in ident:
            raise ValueError(f"prefetch token {{{{{name}}}}} has no value (context.userId is not a {kind})")
        return _encode(ident, keep_slash=False)
    raise ValueError(f"unsupported prefetch token {{{{{name}}}}}")


def fill_template(template: str, context: Mapping[str, str]) -> str:
    """Substitute CDS Hooks prefetch tokens in ``template`` with URL-encoded values from ``context``.

    ``context`` is the hook's context object (``patientId``, ``userId``, ``encounterId``, ...).
    ``{{context.X}}`` takes ``context[X]``; ``{{userPractitionerId}}``, ``{{userPractitionerRoleId}}``,
    ``{{userPatientId}}`` and ``{{userRelatedPersonId}}`` take the id part of ``context.userId``
    when it references that resource type. Raises ValueError for a token without a value, an
    unknown token or a malformed ``{{``; the message never contains the context values.
    """
    filled = _TOKEN_RE.sub(lambda m: _token_value(m.group(1), context), template)
    # Substituted values are percent-encoded, so any remaining braces come from the template.
    if "{{" in filled or "}}" in filled:
        raise ValueError("malformed prefetch token in template")
    return filled


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    port = url.port
    if port is None:
        port = {"http": 80, "https": 443}.get(url.scheme)
    return (url.scheme, url.host, port)


def _is_read(query: str) -> str | None:
    """Return the resource type when ``query`` is a read (``Type/id`` or ``Type/id/_history/v``)."""
    if "?" in query:
        return None
    parts = query.strip("/").split("/")
    if len(parts) == 2 or (len(parts) == 4 and parts[2] == "_history"):
        return parts[0]
    return None


class _Fetcher:
    """Fetches one prefetch key; every failure becomes a FhirFetchError naming the key."""

    def __init__(
        self,
        *,
        key: str,
        client: httpx.AsyncClient,
        headers: dict[str, str],
        deadline: float,
        origin: tuple[str, str, int | None],
        max_pages: int,
        max_entries: int,
        max_page_bytes: int,
        budget: _ByteBudget,
    ) -> None:
        self.key = key
        self.client = client
        self.headers = headers
        self.deadline = deadline
        self.origin = origin
        self.max_pages = max_pages
        self.max_entries = max_entries
        self.max_page_bytes = max_page_bytes
        self.budget = budget

    def error(self, reason: str, detail: str = "") -> FhirFetchError:
        return FhirFetchError(self.key, reason, detail)

    async def get_json(self, url: httpx.URL, what: str) -> Any:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise self.error("timeout", f"deadline passed before requesting {what}")
        try:
            async with self.client.stream(
                "GET",
                url,
                headers=self.headers,
                timeout=httpx.Timeout(remaining),
                follow_redirects=False,
            ) as response:
                if not 200 <= response.status_code < 300:
                    raise self.error("http_status", f"HTTP {response.status_code} for {what}")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > self.max_page_bytes:
                    raise self.error("too_large", f"{what} is larger than {self.max_page_bytes} bytes")
                if declared.isdigit() and self.budget.used + int(declared) > self.budget.limit:
                    raise self.error(
                        "too_large",
                        f"the answers for this request would pass {self.budget.limit} bytes at {what} "
                        "(CDS_MAX_FETCH_BYTES)",
                    )
                body = bytearray()
                # Decoded bytes are counted, so a compressed body cannot expand past the cap.
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > self.max_page_bytes:
                        raise self.error("too_large", f"{what} is larger than {self.max_page_bytes} bytes")
                    if not self.budget.take(len(chunk)):
                        raise self.error(
                            "too_large",
                            f"the answers for this request passed {self.budget.limit} bytes at {what} "
                            "(CDS_MAX_FETCH_BYTES)",
                        )
        except httpx.TimeoutException:
            raise self.error("timeout", f"no complete answer for {what} before the deadline") from None
        except httpx.ConnectError:
            raise self.error("unreachable", f"cannot connect to the FHIR server for {what}") from None
        except httpx.HTTPError as exc:
            # httpx messages may quote the URL; keep only the exception type.
            raise self.error("transport", f"{type(exc).__name__} while fetching {what}") from None
        try:
            return orjson.loads(bytes(body))
        except orjson.JSONDecodeError:
            raise self.error("not_json", f"{what} is not JSON") from None

    async def read(self, url: httpx.URL, resource_type: str) -> dict[str, Any]:
        data = await self.get_json(url, f"read of {resource_type}")
        if not isinstance(data, dict) or data.get("resourceType") != resource_type:
            got = data.get("resourceType") if isinstance(data, dict) else type(data).__name__
            raise self.error("not_resource", f"read of {resource_type} returned {str(got)[:40]!r}")
        return data

    async def search(self, url: httpx.URL) -> dict[str, Any]:
        entries: list[Any] = []
        seen: set[str] = set()
        total: int | None = None
        next_url: httpx.URL | None = url
        page = 0
        while next_url is not None:
            page += 1
            if page > self.max_pages:
                raise self.error("too_many_pages", f"search has more than {self.max_pages} pages")
            seen.add(str(next_url))
            bundle = await self.get_json(next_url, f"search page {page}")
            if (
                not isinstance(bundle, dict)
                or bundle.get("resourceType") != "Bundle"
                or bundle.get("type", "searchset") != "searchset"
            ):
                raise self.error("not_bundle", f"search page {page} is not a searchset Bundle")
            page_entries = bundle.get("entry", [])
            if not isinstance(page_entries, list):
                raise self.error("not_bundle", f"search page {page} has a malformed entry list")
            if page == 1 and isinstance(bundle.get("total"), int):
                total = bundle["total"]
                if total > self.max_entries:
                    raise self.error(
                        "too_many_entries",
                        f"server reports more than {self.max_entries} matches (CDS_MAX_RESOURCES_PER_KEY)",
                    )
            entries.extend(page_entries)
            if len(entries) > self.max_entries:
                raise self.error(
                    "too_many_entries",
                    f"search returned more than {self.max_entries} entries (CDS_MAX_RESOURCES_PER_KEY)",
                )
            next_url = self.next_link(bundle, next_url, page, seen)
        result: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
        if total is not None:
            result["total"] = total
        result["entry"] = entries
        return result

    def next_link(
        self, bundle: dict[str, Any], current: httpx.URL, page: int, seen: set[str]
    ) -> httpx.URL | None:
        links = bundle.get("link", [])
        if not isinstance(links, list):
            raise self.error("not_bundle", f"search page {page} has a malformed link list")
        for link in links:
            if isinstance(link, dict) and link.get("relation") == "next":
                raw = link.get("url")
                if not isinstance(raw, str) or not raw:
                    raise self.error("not_bundle", f"search page {page} has a next link without url")
                try:
                    target = current.join(raw)
                except httpx.InvalidURL:
                    raise self.error("not_bundle", f"search page {page} has an invalid next link") from None
                if _origin(target) != self.origin:
                    raise self.error(
                        "next_origin", f"next link of page {page} leaves the FHIR server's origin"
                    )
                if str(target) in seen:
                    raise self.error("page_loop", f"next link of page {page} points to an earlier page")
                return target
        return None


async def fetch_prefetch(
    *,
    client: httpx.AsyncClient,
    fhir_server: str,
    access_token: str | None,
    queries: Mapping[str, str],
    deadline: float,
    max_pages: int = 50,
    max_entries: int = 20000,
    max_page_bytes: int = DEFAULT_MAX_PAGE_BYTES,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
) -> dict[str, dict[str, Any]]:
    """Fetch every prefetch query concurrently from ``fhir_server`` before ``deadline``.

    ``queries`` maps prefetch key to a filled relative query (``Patient/123`` or
    ``Observation?patient=123``); ``deadline`` is a ``time.monotonic()`` value. A read returns
    the resource, a search returns one searchset Bundle holding the entries of all pages.
    ``max_total_bytes`` bounds the decoded bytes of every answer together (all keys, all pages).
    On failure raises FhirFetchError for the first failing key in ``queries`` order: when a
    key fails, keys after it are cancelled and keys before it are still awaited, so the key
    reported does not depend on timing.
    """
    try:
        base = httpx.URL(fhir_server.rstrip("/"))
    except httpx.InvalidURL:
        raise ValueError("fhir_server is not a valid URL") from None
    if base.scheme not in ("http", "https") or not base.host:
        raise ValueError("fhir_server must be an absolute http(s) URL")
    headers = {"Accept": "application/fhir+json"}
    if access_token is not None:
        if not _TOKEN_CHARS_RE.fullmatch(access_token):
            raise ValueError("access token contains characters not allowed in an HTTP header")
        headers["Authorization"] = f"Bearer {access_token}"
    origin = _origin(base)
    keys = list(queries)
    if not keys:
        return {}
    budget = _ByteBudget(max_total_bytes)

    async def one(key: str) -> dict[str, Any]:
        fetcher = _Fetcher(
            key=key,
            client=client,
            headers=headers,
            deadline=deadline,
            origin=origin,
            max_pages=max_pages,
            max_entries=max_entries,
            max_page_bytes=max_page_bytes,
            budget=budget,
        )
        query = queries[key].lstrip("/")
        try:
            url = httpx.URL(f"{base}/{query}")
        except httpx.InvalidURL:
            raise fetcher.error("bad_query", "query does not form a valid URL") from None
        if _origin(url) != origin:
            raise fetcher.error("bad_query", "query does not stay on the FHIR server")
        resource_type = _is_read(query)
        if resource_type is not None:
            return await fetcher.read(url, resource_type)
        return await fetcher.search(url)

    tasks = [asyncio.create_task(one(key)) for key in keys]
    index = {task: i for i, task in enumerate(tasks)}
    pending: set[asyncio.Task[dict[str, Any]]] = set(tasks)
    first_bad: int | None = None  # lowest index of a key that failed
    timed_out = False
    try:
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            done, pending = await asyncio.wait(
                pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                if task.exception() is not None and (first_bad is None or index[task] < first_bad):
                    first_bad = index[task]
            if first_bad is not None:
                # Keys after the failing one cannot change the outcome: stop them now.
                for task in [t for t in pending if index[t] > first_bad]:
                    task.cancel()
                    pending.discard(task)
        if timed_out and pending:
            lowest = min(index[t] for t in pending)
            if first_bad is None or lowest < first_bad:
                raise FhirFetchError(keys[lowest], "timeout", "no complete answer before the deadline")
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if first_bad is not None:
        exc = tasks[first_bad].exception()
        assert exc is not None
        raise exc
    return {key: task.result() for key, task in zip(keys, tasks, strict=True)}
