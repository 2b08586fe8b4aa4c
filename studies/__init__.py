"""Data sets, models, the training runner and the declarative studies that reproduce the source papers."""

__all__: list[str] = []
