"""The two CDS services this app offers, described from the rule pack (https://cds-hooks.hl7.org/2.0/#discovery)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cds.hooks import ASSESSMENT, HOOKS, ORDER_CHECK, QUESTIONNAIRE_PATH, TOPICS
from cds.prefetch import prefetch_templates
from cds.rulepack import RulePack


@dataclass(frozen=True)
class ServiceSpec:
    """One CDS service: its discovery entry and which card topics it may return (None: all)."""

    id: str
    hook: str
    title: str
    description: str
    usage_requirements: str
    prefetch: Mapping[str, str]
    topics: frozenset[str] | None = None

    def describe(self) -> dict[str, Any]:
        """The discovery entry; every optional field has a value, so none is null or empty."""
        return {
            "hook": self.hook,
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "prefetch": dict(self.prefetch),
            "usageRequirements": self.usage_requirements,
        }


def build_catalog(pack: RulePack) -> dict[str, ServiceSpec]:
    templates = prefetch_templates(pack)
    usage = (
        f"Reads the patient's answers to the Questionnaire {pack.questionnaire_url} "
        f"(version {pack.questionnaire.get('version', 'any')}), sent as prefetch or kept on the FHIR "
        f"server; most cards rest on them. This service serves it at GET {QUESTIONNAIRE_PATH} "
        f"(application/fhir+json). Rule pack {pack.manifest.id} {pack.version}."
    )
    services = [
        ServiceSpec(
            id=ASSESSMENT,
            hook=HOOKS[ASSESSMENT],
            title="Muscle cramps while taking calcium: likely causes",
            description=(
                "When a patient who reports muscle cramps is opened, explains the likely causes that calcium "
                "alone does not address (vitamin D or magnesium deficiency, poor calcium absorption, "
                "circulation, neuromuscular causes), says when to seek care and suggests the missing tests."
            ),
            usage_requirements=usage,
            prefetch=templates,
        ),
        ServiceSpec(
            id=ORDER_CHECK,
            hook=HOOKS[ORDER_CHECK],
            title="Calcium supplement order for cramps: check the causes first",
            description=(
                "When a calcium supplement is about to be signed for a patient with cramps, shows the causes "
                "of cramps that calcium alone may not end, and when to seek care. Silent for other orders."
            ),
            usage_requirements=usage,
            prefetch=templates,
            topics=TOPICS[ORDER_CHECK],
        ),
    ]
    return {service.id: service for service in services}
