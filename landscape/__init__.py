"""Loss-landscape analysis: directions, surfaces, curvature, sharpness and training-trajectory measures.

Every function returns a tidy ``pandas.DataFrame`` or a small dataclass of arrays and config; nothing here plots
(the seaborn helpers are in ``paper_figures``). ``landscape.distributed`` holds the ``torch.distributed`` helpers.
"""

from landscape.adaptive_lr import (
    AdaptiveLR,
    adaptive_lr_state,
    adaptive_lr_variance_from_run,
    exact_mean,
    exact_variance,
    first_order_variance,
    rho,
    simulate_adaptive_lr,
)
from landscape.curvature import (
    CurvatureOperator,
    EigenResult,
    GGNOperator,
    HessianOperator,
    PreconditionedOperator,
    SpectralDensity,
    TraceResult,
    hutchinson_trace,
    hutchpp_trace,
    lanczos_eigenpairs,
    power_iteration_eigenpairs,
    slq_density,
)
from landscape.directions import (
    PCADirections,
    cosine_similarity,
    eigen_directions,
    model_direction,
    normalize_direction,
    pca_directions,
    random_direction,
)
from landscape.reparam import rescale_jacobian, rescale_relu_layers
from landscape.sharpness import Sharpness, asam_sharpness, epsilon_sharpness, m_sharpness, sam_sharpness
from landscape.sharpness_dynamics import SharpnessDynamics, flat_preconditioner
from landscape.surface_ensemble import SurfaceEnsemble, random_surfaces
from landscape.surfaces import Surface, interpolate_1d, make_grid, surface_1d, surface_2d
from landscape.trajectory import (
    CheckpointDistances,
    EffectiveStepSize,
    GradientNorm,
    Measure,
    Tracker,
    WeightNorms,
    log_steps,
)
from landscape.vtk import read_vtk, write_vtk

__all__ = [
    "AdaptiveLR",
    "CheckpointDistances",
    "CurvatureOperator",
    "EffectiveStepSize",
    "EigenResult",
    "GGNOperator",
    "GradientNorm",
    "HessianOperator",
    "Measure",
    "PCADirections",
    "PreconditionedOperator",
    "Sharpness",
    "SharpnessDynamics",
    "SpectralDensity",
    "Surface",
    "SurfaceEnsemble",
    "TraceResult",
    "Tracker",
    "WeightNorms",
    "adaptive_lr_state",
    "adaptive_lr_variance_from_run",
    "asam_sharpness",
    "cosine_similarity",
    "eigen_directions",
    "epsilon_sharpness",
    "exact_mean",
    "exact_variance",
    "first_order_variance",
    "flat_preconditioner",
    "hutchinson_trace",
    "hutchpp_trace",
    "interpolate_1d",
    "lanczos_eigenpairs",
    "log_steps",
    "m_sharpness",
    "make_grid",
    "model_direction",
    "normalize_direction",
    "pca_directions",
    "power_iteration_eigenpairs",
    "random_direction",
    "random_surfaces",
    "rescale_jacobian",
    "rescale_relu_layers",
    "rho",
    "sam_sharpness",
    "simulate_adaptive_lr",
    "slq_density",
    "surface_1d",
    "surface_2d",
    "read_vtk",
    "write_vtk",
]
