"""The message-passing network of the QM9 benchmark."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Batch
from torch_geometric.nn import NNConv, Set2Set

from .base import MultiTaskModel


class MPNN(MultiTaskModel):
    """Gilmer et al.'s MPNN as used on QM9 by Nash-MTL: z = ReLU(W1 Set2Set(h_T)), with
    h_0 = ReLU(W0 x) and T rounds of h_{t+1} = GRU(ReLU(NNConv(h_t)), h_t) whose NNConv
    (edge network 5 -> 128 -> hidden^2, mean aggregation) and GRU weights are shared across
    rounds; one Linear(hidden, 1) head per task."""

    def __init__(self, num_tasks: int, node_features: int, edge_features: int, hidden: int = 64, rounds: int = 3):
        super().__init__()
        edge_net = nn.Sequential(nn.Linear(edge_features, 128), nn.ReLU(),
                                 nn.Linear(128, hidden * hidden))
        self.rounds = rounds
        self.encoder = nn.ModuleDict({
            "embed": nn.Linear(node_features, hidden),
            "conv": NNConv(hidden, hidden, edge_net, aggr="mean"),
            "gru": nn.GRU(hidden, hidden),
            "readout": Set2Set(hidden, processing_steps=3),
            "project": nn.Linear(2 * hidden, hidden),
        })
        self.heads = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(num_tasks))

    def encode(self, inputs: Batch) -> Tensor:
        """The (num_graphs, hidden) graph representation z."""
        enc = self.encoder
        out = F.relu(enc["embed"](inputs.x))
        h = out.unsqueeze(0)
        for _ in range(self.rounds):
            message = F.relu(enc["conv"](out, inputs.edge_index, inputs.edge_attr))
            out, h = enc["gru"](message.unsqueeze(0), h)
            out = out.squeeze(0)
        return F.relu(enc["project"](enc["readout"](out, inputs.batch)))

    def decode(self, z: Tensor) -> list[Tensor]:
        """One (num_graphs, 1) prediction of the scaled target per task."""
        return [head(z) for head in self.heads]
