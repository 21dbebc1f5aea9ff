"""Hydra configs: every registry name is an ``aggregator=`` choice derived from the method's
signature (no YAML to keep in step), and so is every named setting of a method; a
benchmark's data and its training protocol are separate groups."""


import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import aggregators
import mtrl.launch  # noqa: F401  (registers the aggregator configs)
from helpers import ROOT

CONFIGS = ROOT / "configs"


def test_every_registry_name_composes_with_its_defaults():
    assert not (CONFIGS / "aggregator").exists(), "a YAML would repeat a method's defaults"
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        for name in aggregators.available():
            cfg = OmegaConf.to_container(compose("train", overrides=[f"aggregator={name}"]).aggregator)
            assert cfg.pop("name") == name
            assert cfg == {k: list(v) if isinstance(v, tuple) else v
                           for k, v in aggregators.hyperparameters(name).items()}, name
            aggregators.make(name, 3, **cfg)
        # a named setting composes as its method plus the setting's name; its values come with the presets
        for setting, method in aggregators.presets.SETTINGS.items():
            cfg = OmegaConf.to_container(compose("train", overrides=[f"aggregator={setting}"]).aggregator)
            assert cfg == {"name": method, "setting": setting}
    assert set(mtrl.launch.aggregator_choices()) == set(aggregators.available()) | set(aggregators.presets.SETTINGS)


def test_a_setting_takes_its_benchmark_values_and_refuses_other_benchmarks():
    from mtrl.configuration import ConfigError, aggregator_config

    cfg, applied = aggregator_config({"name": "ls", "setting": "grid_search"}, "nyud")
    assert cfg == {"name": "ls", "setting": "grid_search", "loss_weights": [1, 1, 2, 50]}
    assert applied == {"loss_weights": [1, 1, 2, 50]}
    typed, _ = aggregator_config({"name": "ls", "setting": "grid_search", "loss_weights": [1, 1, 1, 1]}, "nyud",
                                 explicit={"loss_weights"})
    assert typed["loss_weights"] == [1, 1, 1, 1]
    for preset in ("qm9", None):
        with pytest.raises(ConfigError, match="grid_search has values for nyud, pascal_context only"):
            aggregator_config({"name": "ls", "setting": "grid_search"}, preset, known_presets=("qm9",))
    with pytest.raises(ConfigError, match="unknown aggregator setting 'nosuch'"):
        aggregator_config({"name": "ls", "setting": "nosuch"}, "nyud")


BENCHMARK_KEYS = {"_target_", "name", "image_size", "size", "augment", "variant", "target_scale", "edge_thresholds",
                  "num_workers", "report_last_epochs"}


def test_benchmark_data_and_protocol_are_separate_groups():
    """configs/benchmark/ holds a data set and its tasks (the ``benchmark`` section only),
    configs/protocol/ how a paper trains on it (model, schedule, preset); the benchmark's
    YAML chooses its protocol, ``protocol=`` on the command line another."""
    for path in sorted((CONFIGS / "benchmark").glob("*.yaml")):
        text = path.read_text()
        assert "@package" not in text and set(yaml.safe_load(text)) - {"defaults"} <= BENCHMARK_KEYS, path.name
        assert (CONFIGS / "protocol" / path.name).exists(), f"{path.name} has no protocol"
    for path in sorted((CONFIGS / "protocol").glob("*.yaml")):
        assert set(yaml.safe_load(path.read_text())) - {"defaults"} <= {"protocol", "train", "model"}, path.name
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        paper = compose("supervised", overrides=["benchmark=nyuv2"])
        small = compose("supervised", overrides=["benchmark=nyuv2_small"])
        mixed = compose("supervised", overrides=["benchmark=nyuv2", "protocol=nyuv2_small"])
    assert (paper.protocol.preset, paper.train.epochs, paper.model.name) == ("paper", 200, "segnet_mtan")
    assert (small.protocol.preset, small.train.epochs, list(small.benchmark.image_size)) == ("small", 3, [96, 128])
    # the full-size data under the small protocol
    assert (mixed.protocol.preset, mixed.train.epochs, mixed.benchmark.image_size) == ("small", 3, None)
    assert mixed.benchmark.report_last_epochs == 10 and list(mixed.model.filters) == [16, 32, 64, 128, 128]
