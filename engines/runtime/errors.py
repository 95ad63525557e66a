"""The one-line error of the runtime package; numpy-free, so that the worker can report a
missing numpy instead of crashing."""


class ModelError(Exception):
    """A one-line failure. ``kind`` is ``engine`` or ``runtime_missing``: birdd raises it again
    as EngineError or RuntimeMissingError; the worker sends it back in its reply."""

    def __init__(self, message, kind="engine"):
        Exception.__init__(self, message)
        self.kind = kind


def first_line(exc):
    """The first line of a runtime's error message (they span pages), or its repr if empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)
