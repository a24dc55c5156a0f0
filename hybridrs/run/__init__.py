"""The command line (``hybridrs certify`` / ``hybridrs report``), one module per concern:

* :mod:`~hybridrs.run.config` — the settings, their checks and limits, :class:`InputError`;
* :mod:`~hybridrs.run.plugins` — loading the user's model (import path, device, fingerprint);
* :mod:`~hybridrs.run.records` — parsing and checking the input records, confined image reading;
* :mod:`~hybridrs.run.results` — the self-describing, locked, append-only results file;
* :mod:`~hybridrs.run.runner` — checking everything, then certifying each record through
  :meth:`hybridrs.smoothing.HybridSmooth.certify`;
* :mod:`~hybridrs.run.report` — the certified-accuracy table and the frontier plot;
* :mod:`~hybridrs.run.distributed` — sharding over a Ray cluster;
* :mod:`~hybridrs.run.cli` — argparse and ``main`` (the user documentation is its docstring).

Imports go one way (config ← plugins ← records ← results ← runner ← distributed; report and cli on
top; cli imports distributed only when ``--ray`` is given), and the core package never imports
this one.
"""
