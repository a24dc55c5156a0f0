"""Seeds of Monte Carlo runs, derived so that every input and every setting gets its own stream.

``input_seed(seed, *keys)`` hashes a global seed with any keys (a record id, the index of an input,
every parameter of an experiment, a stage or batch number) into a 62-bit seed (BLAKE2b).  Two runs
that differ in any key draw independent noise; the same keys always give the same seed, whatever
the order in which inputs are processed or how they are sharded.
"""

from __future__ import annotations

import hashlib

from hybridrs import _validate as v


def input_seed(seed: int, *keys) -> int:
    """62-bit seed from ``seed`` and ``keys`` (each turned into its ``repr``; ints, strings, floats
    and tuples of them are stable across runs and machines)."""
    text = "/".join([str(v.integer(seed, "seed")), *(repr(k) for k in keys)])
    h = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 62) - 1)
