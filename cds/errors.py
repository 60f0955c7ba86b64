"""Every error the package raises on purpose, with the fields that say what and where.

CdsError                      base; `status` is the HTTP status it maps to
├── InputError (400)          what a client sent is unusable
│   ├── JsonError             not JSON, or JSON we refuse (depth, duplicate keys, NaN)
│   ├── ShapeError            JSON, but not a Bundle or a CDS Hooks request
│   ├── FhirValidationError   a resource fails FHIR validation (names resource and field)
│   └── PatientError          zero or several patients where one is needed
├── UnknownServiceError (404)
├── PrefetchMissingError (412) a prefetch key that was not sent and could not be fetched
├── RequestTimeoutError (408)  the body did not arrive in time (the connection is closed after it)
├── PayloadTooLargeError (413)
│   └── BodyTooLargeError      the body itself is over the limit (the connection is closed after it)
├── UnsupportedMediaTypeError (415) a body sent as something other than JSON
├── RulePackError             a rule file is wrong (names file and field); stops start-up
└── EngineError               the rule engine misbehaved (a bug, never the client's fault)
"""

from __future__ import annotations


class CdsError(Exception):
    """Base class; `status` is the HTTP status, `field` the offending field if any."""

    status = 500

    def __init__(self, message: str, *, resource: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.resource = resource
        self.field = field

    def __str__(self) -> str:
        where = ": ".join(part for part in (self.resource, self.field) if part)
        return f"{where}: {self.message}" if where else self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(message={self.message!r}, resource={self.resource!r}, field={self.field!r})"


class InputError(CdsError):
    status = 400


class JsonError(InputError):
    pass


class ShapeError(InputError):
    pass


class FhirValidationError(InputError):
    pass


class PatientError(InputError):
    pass


class UnknownServiceError(CdsError):
    status = 404


class PrefetchMissingError(CdsError):
    status = 412


class RequestTimeoutError(CdsError):
    status = 408
    close_connection = True


class PayloadTooLargeError(CdsError):
    status = 413
    # True when the body was not read to its end: the answer says `Connection: close` (cds.connections).
    close_connection = False


class BodyTooLargeError(PayloadTooLargeError):
    close_connection = True


class UnsupportedMediaTypeError(CdsError):
    status = 415


class RulePackError(CdsError):
    """A rule-pack file is invalid; `resource` holds the file path."""


class EngineError(CdsError):
    pass
