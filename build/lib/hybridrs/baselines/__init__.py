"""The methods the book compares randomized smoothing with: white-box attacks
(:mod:`~hybridrs.baselines.attacks`), Lipschitz bounds and networks
(:mod:`~hybridrs.baselines.lipschitz`), erase-and-check (:mod:`~hybridrs.baselines.erase`), the
local Lipschitz bound of attention (:mod:`~hybridrs.baselines.attention`) and MMCert
(:mod:`~hybridrs.baselines.mmcert`)."""
