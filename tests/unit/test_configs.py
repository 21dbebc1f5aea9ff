"""Hydra configs: one aggregator file per registry name holding exactly its defaults."""


import yaml

import aggregators
from helpers import ROOT

CONFIGS = ROOT / "configs"


def test_one_aggregator_config_per_registry_name_with_its_defaults():
    files = {p.stem for p in (CONFIGS / "aggregator").glob("*.yaml")}
    assert files >= set(aggregators.available())
    for name in aggregators.available():
        cfg = yaml.safe_load((CONFIGS / "aggregator" / f"{name}.yaml").read_text())
        assert cfg.pop("name") == name
        assert cfg == aggregators.hyperparameters(name), name
        aggregators.make(name, 3, **cfg)
    # the other files are named settings of a registry method (grid_search: ls with loss weights)
    for name in files - set(aggregators.available()):
        cfg = yaml.safe_load((CONFIGS / "aggregator" / f"{name}.yaml").read_text())
        assert cfg["name"] in aggregators.available() and set(cfg) - {"name"} <= set(aggregators.hyperparameters(cfg["name"]))
