"""Binary morphology shared by the data readers (edges from label maps) and the edge metric."""

from __future__ import annotations

import numpy as np


def _guo_hall_tables() -> tuple[np.ndarray, np.ndarray]:
    """Deletion tables of Guo & Hall's two-subiteration thinning (Comm. ACM 32(3), 1989),
    the algorithm of ``skimage.morphology.thin``, indexed by the 8-neighbour code with bit 0
    = east, then counter-clockwise: 1 north-east, 2 north, 3 north-west, 4 west,
    5 south-west, 6 south, 7 south-east."""
    first, second = np.zeros(256, bool), np.zeros(256, bool)
    for code in range(256):
        b = [(code >> i) & 1 for i in range(8)]
        # C(p): number of 4-connected background gaps bordered by foreground (must be 1)
        crossings = sum(1 for i in (0, 2, 4, 6) if not b[i] and (b[i + 1] or b[(i + 2) % 8]))
        # N(p) = min(N1, N2) in {2, 3}
        n1 = sum(1 for k in (1, 3, 5, 7) if b[k] or b[k - 1])
        n2 = sum(1 for k in (1, 3, 5, 7) if b[k] or b[(k + 1) % 8])
        removable = crossings == 1 and min(n1, n2) in (2, 3)
        # subiteration 1 keeps p when (NE or N or not SE) and E; subiteration 2 the mirror
        first[code] = removable and not ((b[1] or b[2] or not b[7]) and b[0])
        second[code] = removable and not ((b[5] or b[6] or not b[3]) and b[4])
    return first, second


_THIN_TABLES = _guo_hall_tables()


def _neighbour_code(skel: np.ndarray) -> np.ndarray:
    p = np.pad(skel, 1).astype(np.int32)   # zeros outside the image
    return (p[1:-1, 2:] | p[:-2, 2:] << 1 | p[:-2, 1:-1] << 2 | p[:-2, :-2] << 3 | p[1:-1, :-2] << 4
            | p[2:, :-2] << 5 | p[2:, 1:-1] << 6 | p[2:, 2:] << 7)


def thin(mask: np.ndarray) -> np.ndarray:
    """Morphological thinning of a binary (H, W) map (nonzero = foreground) to 1-pixel-wide
    curves: Guo & Hall's two-subiteration parallel algorithm (Comm. ACM 32(3), 1989; Lam,
    Lee & Suen, IEEE TPAMI 14(9), 1992, p. 879), both subiterations per pass, repeated until
    a pass deletes nothing, pixels outside the image counting as background.  This is what
    ``skimage.morphology.thin`` and MATLAB's ``bwmorph(BW, 'thin', Inf)`` compute: the label
    map edges of PASCAL-Context (the reference's data side) and the BSDS / SEISM edge metric
    (its evaluation side) both thin with it."""
    skel = np.asarray(mask, dtype=bool).copy()
    if skel.ndim != 2:
        raise ValueError(f"thin expects a 2-D map, got shape {skel.shape}")
    count = -1
    while count != int(skel.sum()):
        count = int(skel.sum())
        for table in _THIN_TABLES:
            skel[table[_neighbour_code(skel)]] = False
    return skel
