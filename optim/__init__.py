"""Optimizers of the source papers as ``torch.optim.Optimizer`` subclasses that expose what they compute."""

__all__: list[str] = []
