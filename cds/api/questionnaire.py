"""GET /questionnaire: the FHIR Questionnaire whose answers the rules read, for EHRs to load and clinicians to read.

Open like /healthz: it holds no patient data, an EHR loads it once to build its form, and the link in the
"cramp details missing" card is opened by a clinician's browser, which sends no JWT. JSON by default
(`application/fhir+json`); a browser that asks for HTML gets a printable list of the questions.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse, Response

from cds.api.deps import RuntimeDep
from cds.api.responses import JsonResponse
from cds.hooks import QUESTIONNAIRE_PATH

router = APIRouter(tags=["CDS Hooks"])


class FhirJsonResponse(JsonResponse):
    media_type = "application/fhir+json"


@router.get(
    QUESTIONNAIRE_PATH,
    summary="The cramp Questionnaire",
    response_class=FhirJsonResponse,
    response_model=None,
    responses={
        200: {
            "description": "The Questionnaire (JSON), or its questions as a page when the client asks for HTML.",
            "content": {
                "application/fhir+json": {
                    "schema": {"type": "object", "description": "FHIR R4 Questionnaire"}
                },
                "text/html": {"schema": {"type": "string"}},
            },
        }
    },
)
async def questionnaire(request: Request, runtime: RuntimeDep) -> Response:
    """The rule pack's FHIR R4 Questionnaire (its `url` is the canonical that QuestionnaireResponses cite).

    Save the patient's answers as a QuestionnaireResponse with `questionnaire` = that canonical and the
    same linkIds; the services read them through the `questionnaireResponses` prefetch key.
    """
    document = runtime.evaluator.pack.questionnaire
    accept = request.headers.get("accept", "")
    if "text/html" in accept and "json" not in accept.split(",")[0]:
        return HTMLResponse(render_html(document))
    return FhirJsonResponse(document)


def render_html(document: Mapping[str, Any]) -> str:
    """The questions as a plain page (no scripts, no styles: the API's CSP forbids both)."""
    title = html.escape(str(document.get("title", "Questionnaire")))
    body = "".join(_items(document.get("item", [])))
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title></head>'
        f"<body><h1>{title}</h1><p>Version {html.escape(str(document.get('version', '')))}; canonical "
        f"<code>{html.escape(str(document.get('url', '')))}</code>. Record the answers as a FHIR "
        "QuestionnaireResponse citing that canonical; the linkId of each question is shown in brackets."
        f"</p>{body}</body></html>"
    )


def _items(items: Iterable[Mapping[str, Any]]) -> Iterable[str]:
    for item in items:
        text = html.escape(str(item.get("text", "")))
        link = html.escape(str(item.get("linkId", "")))
        if item.get("type") == "group":
            yield f"<h2>{text}</h2><ol>{''.join(_items(item.get('item', [])))}</ol>"
            continue
        kind = {"boolean": "yes / no", "integer": "a whole number"}.get(
            str(item.get("type")), item.get("type")
        )
        children = "".join(_items(item.get("item", [])))
        nested = f"<ol>{children}</ol>" if children else ""
        yield f"<li>{text} <small>({html.escape(str(kind))}) [{link}]</small>{nested}</li>"
