"""Small synthetic QM9 data sets in the on-disk layout PyG's ``QM9`` class reads without
rdkit: ``root/raw/qm9_v3.pt``, a ``torch.save``d list with one dict per molecule holding
``x`` (N, 11), ``edge_index`` (2, E), ``edge_attr`` (E, 4), ``y`` (1, 19), ``pos`` (N, 3),
``z`` (N,), ``name`` and ``idx``, as in PyG's pre-processed archive ``qm9_v3.zip``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

ATOMIC_NUMBERS = torch.tensor([1, 6, 7, 8, 9])   # H, C, N, O, F: PyG's atom-type one-hot order
#: rough location and spread of QM9's 19 targets in PyG's units (D, a0^3, eV, a0^2, ...)
TARGET_LOCATION = torch.tensor([2.7, 75.0, -6.5, 0.3, 6.9, 1190.0, 4.1, -11180.0, -11180.0,
                                -11180.0, -11180.0, 31.6, -76.1, -76.6, -77.2, -70.8, 9.8,
                                1.4, 1.1])
TARGET_SPREAD = torch.tensor([1.5, 8.2, 0.6, 1.3, 1.3, 280.0, 0.9, 1090.0, 1090.0, 1090.0,
                              1090.0, 4.1, 10.3, 10.4, 10.5, 9.5, 1.9, 0.3, 0.2])


def _molecule(index: int, weights: torch.Tensor, gen: torch.Generator) -> dict:
    """One random molecule: 3-9 atoms bonded as a random tree, with targets that depend on
    its atom-type composition (so a model can learn them)."""
    n = int(torch.randint(3, 10, (1,), generator=gen))
    kind = torch.randint(0, 5, (n,), generator=gen)
    z = ATOMIC_NUMBERS[kind]
    pos = 1.5 * torch.randn(n, 3, generator=gen)

    child = torch.arange(1, n)
    parent = torch.stack([torch.randint(0, int(j), (1,), generator=gen)[0] for j in child])
    bond = torch.randint(0, 4, (n - 1,), generator=gen)
    row, col = torch.cat([child, parent]), torch.cat([parent, child])
    order = (row * n + col).argsort()
    edge_index = torch.stack([row, col])[:, order]
    bond_type = torch.cat([bond, bond])[order]

    aromatic = torch.zeros(n).index_add_(0, edge_index[1], (bond_type == 3).float()).clamp(max=1)
    hybrid = F.one_hot(torch.randint(0, 3, (n,), generator=gen), 3).float()
    num_hs = torch.zeros(n).index_add_(0, edge_index[1], (z[edge_index[0]] == 1).float())
    x = torch.cat([F.one_hot(kind, 5).float(), z[:, None].float(), aromatic[:, None], hybrid,
                   num_hs[:, None]], dim=1)

    composition = F.one_hot(kind, 5).float().mean(0)
    signal = 2.0 * composition @ weights + 0.1 * torch.randn(19, generator=gen)
    y = (TARGET_LOCATION + TARGET_SPREAD * signal)[None, :]
    return {"x": x, "edge_index": edge_index, "edge_attr": F.one_hot(bond_type, 4).float(),
            "y": y, "pos": pos, "z": z, "name": f"gdb_{index + 1}", "idx": index}


def write_qm9(root: str | Path, num_molecules: int = 40, seed: int = 0) -> list[dict]:
    """Writes ``num_molecules`` random molecules to ``root/raw/qm9_v3.pt`` and returns them."""
    gen = torch.Generator().manual_seed(seed)
    weights = torch.randn(5, 19, generator=gen)
    molecules = [_molecule(i, weights, gen) for i in range(num_molecules)]
    raw = Path(root) / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    torch.save(molecules, raw / "qm9_v3.pt")
    return molecules
