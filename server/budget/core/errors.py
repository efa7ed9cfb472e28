"""What the ledger refuses to do, typed, each with the HTTP status the API answers it with."""

from __future__ import annotations


class LedgerError(ValueError):
    """A request the ledger cannot carry out; the message says why."""

    status_code = 400


class NotFound(LedgerError):
    status_code = 404


class DuplicateName(LedgerError):
    status_code = 409


class UnknownInstitution(LedgerError):
    """An event names an institution nobody registered."""

    status_code = 422
