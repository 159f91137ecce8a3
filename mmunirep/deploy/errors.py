"""The error the exporters raise for a model part they do not rewrite."""


class UnsupportedModelError(ValueError):
    """The model has a part that the exporter does not support."""
