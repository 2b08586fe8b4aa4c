"""Loss-landscape analysis: directions, surfaces, curvature, sharpness and trajectory measures."""

__all__: list[str] = []
