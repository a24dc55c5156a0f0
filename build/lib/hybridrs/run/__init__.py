"""The command line (``hybridrs certify`` / ``hybridrs report``, :mod:`~hybridrs.run.cli`) and its
Ray sharding (:mod:`~hybridrs.run.distributed`)."""
