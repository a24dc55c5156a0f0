"""hybridrs: certified robustness under heterogeneous (text + image) perturbations.

The hybrid Neyman–Pearson certificate of Delattre et al. (ICML 2026) with the classical special
cases it contains: Cohen et al.'s Gaussian radius (no text change) and Chen et al.'s fractional
knapsack (no image change).

Modules: ``kernels`` (discrete smoothing kernels and their likelihood-ratio groups), ``stats``
(Clopper–Pearson bounds), ``certify`` (the certificates), ``smoothing`` (Monte Carlo around a base
classifier).  The book's chapters add modules for attacks, Lipschitz networks, erase-and-check and
the experiments.
"""

from .certify import cohen_radius, frontier, knapsack_bound, radius, required_p_a, worst_case
from .kernels import AbsorbingKernel, Groups, HeteroUniformKernel, UniformKernel
from .smoothing import ABSTAIN, Certificate, GaussianSmooth, HybridSmooth
from .stats import clopper_pearson_lower, clopper_pearson_upper

__version__ = "0.1.0"

__all__ = [
    "ABSTAIN", "AbsorbingKernel", "Certificate", "GaussianSmooth", "Groups", "HeteroUniformKernel",
    "HybridSmooth", "UniformKernel", "clopper_pearson_lower", "clopper_pearson_upper", "cohen_radius",
    "frontier", "knapsack_bound", "radius", "required_p_a", "worst_case",
]
