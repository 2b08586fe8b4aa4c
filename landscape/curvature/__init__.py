"""Curvature of a loss behind one linear-operator interface, and the estimators that take the operator."""

from landscape.curvature._common import EigenResult
from landscape.curvature.lanczos import lanczos_eigenpairs
from landscape.curvature.operator import CurvatureOperator, GGNOperator, HessianOperator
from landscape.curvature.power import power_iteration_eigenpairs
from landscape.curvature.preconditioned import PreconditionedOperator
from landscape.curvature.slq import SpectralDensity, slq_density
from landscape.curvature.trace import TraceResult, hutchinson_trace, hutchpp_trace

__all__ = [
    "CurvatureOperator",
    "EigenResult",
    "GGNOperator",
    "HessianOperator",
    "PreconditionedOperator",
    "SpectralDensity",
    "TraceResult",
    "hutchinson_trace",
    "hutchpp_trace",
    "lanczos_eigenpairs",
    "power_iteration_eigenpairs",
    "slq_density",
]
