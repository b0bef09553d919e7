"""The one exception type of the export path: a clear, user-facing message."""


class ExportError(Exception):
    """A model or checkpoint that cannot be exported; the message says why and what to do."""
