"""Independent references the package is checked against (chapter 6, the tests, the benchmarks):

* :mod:`~hybridrs.reference.mp` — the certificate in 40-digit mpmath arithmetic, sharing no code
  with :mod:`hybridrs.certify`;
* :mod:`~hybridrs.reference.released` — the released code's scalar method, re-implemented to
  measure its numerical habits;
* :mod:`~hybridrs.reference.regions` — per-modality product regions and a Monte Carlo of the
  Neyman–Pearson worst-case classifier (Prop. 4.1).

The names of all three are re-exported here.
"""

from hybridrs.reference.mp import (MPGroups, mp_absorbing_groups, mp_F, mp_knapsack, mp_radius, mp_threshold,
                                   mp_uniform_groups, mp_V, mp_worst_case)
from hybridrs.reference.regions import ProductRegion, np_region_mc, product_region
from hybridrs.reference.released import released_groups_uniform, released_radius, released_worst_case

__all__ = [
    "MPGroups", "mp_uniform_groups", "mp_absorbing_groups", "mp_F", "mp_V", "mp_threshold",
    "mp_worst_case", "mp_knapsack", "mp_radius", "released_groups_uniform", "released_worst_case",
    "released_radius", "ProductRegion", "product_region", "np_region_mc",
]
