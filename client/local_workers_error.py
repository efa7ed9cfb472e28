"""The error a hospital's local workers raise (`client.ddp_workers`), importable without torch."""


class LocalWorkersError(RuntimeError):
    """A local worker crashed, hung past the deadline, or could not join the process group."""
