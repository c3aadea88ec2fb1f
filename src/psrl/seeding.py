"""Stable seeds from names and numbers: the one hash every seeded draw of psrl derives its seed from (training
noise, benchmark images, data-pipeline samples and splits), so a result does not depend on batching, sharding,
resumption or the process (Python's ``hash`` is salted per process, so it is not used)."""
from __future__ import annotations

import hashlib


def stable_seed(*parts: object, bits: int = 63) -> int:
    """The low ``bits`` bits (1-64) of the SHA-256 of ``":".join(str(p) for p in parts)``, read little-endian from
    the digest's first 8 bytes: an int in ``[0, 2**bits)``. 63 bits fit ``torch.Generator.manual_seed``; the data
    pipeline uses 31. Pure: the same parts give the same seed on every machine and Python version.

    Raises:
        ValueError: ``bits`` outside 1-64.
    """
    if not 1 <= bits <= 64:
        raise ValueError(f"bits must be in 1..64, got {bits}")
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << bits) - 1)


__all__ = ["stable_seed"]
