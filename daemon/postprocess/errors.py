"""The error the post-processing stage raises for settings the model cannot honour."""


class PostprocessError(ValueError):
    """A post-processing setting that does not fit the model; the message is one line."""
