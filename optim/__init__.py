"""Optimizers of the source papers as ``torch.optim.Optimizer`` subclasses that expose what they compute."""

from optim.adabelief import AdaBelief
from optim.adam2k import Adam2k
from optim.adam3 import AdaM3
from optim.adamp import AdamP
from optim.expectigrad import Expectigrad
from optim.extragradient import ExtraGradient
from optim.probe import inspect
from optim.radam import RAdam
from optim.registry import make, names
from optim.repulsion import CheckpointRepulsion
from optim.sam import SAM
from optim.sgdp import SGDP
from optim.xgrad import XGrad

__all__ = [
    "SAM",
    "SGDP",
    "AdaBelief",
    "AdaM3",
    "Adam2k",
    "AdamP",
    "CheckpointRepulsion",
    "Expectigrad",
    "ExtraGradient",
    "RAdam",
    "XGrad",
    "inspect",
    "make",
    "names",
]
