"""Every solver with a device form (``aggregators.solvers.on_device``): on the CPU the host
form reads tensor values on the host (the check below is live), the device form run on
the CPU (``solvers.device_form()``, what a GPU runs) reads none and gives the host form's
weights and direction."""

import pytest
import torch

import aggregators
from aggregators import solvers
from helpers import ill_conditioned_grads, no_host_reads

#: (method, options, relative tolerance of the weights against the exact host form)
DEVICE_FORMS = [
    ("mgda", {}, 1e-6),
    ("cagrad", {"c": 0.4}, 1e-8),
    ("upgrad", {}, 1e-9),
    ("imtl_g", {}, 1e-10),
    ("aligned_mtl", {"preferences": [1.0, 0.5, 2.0, 1.0, 0.0, 1.0]}, 1e-10),
    ("pivrg", {}, 1e-9),
    ("fairgrad", {}, 1e-9),
    ("nash_mtl", {}, 1e-9),
]


@pytest.mark.parametrize("name,options,rtol", DEVICE_FORMS, ids=[row[0] for row in DEVICE_FORMS])
def test_the_device_form_reads_nothing_on_the_host_and_gives_the_host_weights(name, options, rtol, monkeypatch):
    G = ill_conditioned_grads(6, 20, seed=3, spread=2.0)
    gram = G @ G.T
    host = aggregators.make(name, 6, **options)
    with pytest.raises(AssertionError, match="host"):
        with no_host_reads(monkeypatch):
            host.weights_from_gram(gram)
    w_host = host.weights_from_gram(gram)
    dev = aggregators.make(name, 6, **options)
    with solvers.device_form(), no_host_reads(monkeypatch):
        w = dev.weights_from_gram(gram)
        d = w @ G
    scale = float(w_host.abs().max())
    assert torch.allclose(w, w_host, rtol=0, atol=rtol * scale), (w, w_host)
    assert torch.allclose(d, w_host @ G, rtol=0, atol=rtol * scale * float(G.norm(dim=1).max()))
