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


class AccountingError(LedgerError):
    """Epsilon cannot be recomputed for an event (the accountant fails, or would take too long); nothing is stored."""

    status_code = 422


class ValueOutOfRange(LedgerError):
    """The database refused a value of the request (an integer beyond 64 bits, a NUL character)."""

    status_code = 422

    @classmethod
    def of(cls, exc: Exception) -> ValueOutOfRange:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        return cls(f"the database cannot store a value of this request ({reason}); check ids, counts and text")
