"""Hydra configs: every registry name is an ``aggregator=`` choice derived from the method's
signature (no YAML to keep in step); the YAMLs left are named settings of a method."""


import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import aggregators
import mtrl.launch  # noqa: F401  (registers the aggregator configs)
from helpers import ROOT

CONFIGS = ROOT / "configs"


def test_every_registry_name_composes_with_its_defaults():
    files = {p.stem for p in (CONFIGS / "aggregator").glob("*.yaml")}
    assert not files & set(aggregators.available()), "a YAML would repeat a method's defaults"
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        for name in aggregators.available():
            cfg = OmegaConf.to_container(compose("train", overrides=[f"aggregator={name}"]).aggregator)
            assert cfg.pop("name") == name
            assert cfg == {k: list(v) if isinstance(v, tuple) else v
                           for k, v in aggregators.hyperparameters(name).items()}, name
            aggregators.make(name, 3, **cfg)
    # the other files are named settings of a registry method (grid_search: ls with loss weights)
    for name in files - set(aggregators.available()):
        cfg = yaml.safe_load((CONFIGS / "aggregator" / f"{name}.yaml").read_text())
        assert cfg["name"] in aggregators.available() and set(cfg) - {"name"} <= set(aggregators.hyperparameters(cfg["name"]))
