"""The one registry mechanism (``mtrl.components``): a config section's ``_target_`` builds
it; bad sections are one ConfigError line naming the fix; every agent config names an
``agents.Agent``."""

from pathlib import Path

import pytest
from helpers import ROOT

from agents import Agent, MultiTaskSAC
from mtrl import components
from mtrl.configuration import ConfigError


def test_build_passes_options_and_runtime_arguments():
    agent = components.build({"_target_": "agents.sac.MultiTaskSAC", "kind": "mtl_sac", "hidden": 8, "layers": 1},
                             "agent", base=Agent, obs_dim=3, act_dim=2, num_tasks=2)
    assert isinstance(agent, MultiTaskSAC) and agent.kind == "mtl_sac" and agent.config["hidden"] == 8


def test_labels_are_not_arguments():
    out = components.build({"_target_": "argparse.Namespace", "name": "x", "a": 1}, "thing", labels=("name",))
    assert vars(out) == {"a": 1}


@pytest.mark.parametrize("section,message", [
    ({"kind": "mh_sac"}, "agent config has no _target_"),
    ({"_target_": "agents.sac.NoSuchAgent"}, "agent: cannot import _target_ 'agents.sac.NoSuchAgent'"),
    ({"_target_": "agents.networks.Actor"}, "is not a agents.base.Agent"),
    ({"_target_": "agents.sac.MultiTaskSAC", "hiden": 8}, "unknown option(s) hiden"),
    ({"_target_": "agents.sac.MultiTaskSAC", "kind": "sac"}, "agent: unknown agent kind 'sac'"),
])
def test_bad_sections_are_one_config_error(section, message):
    with pytest.raises(ConfigError) as err:
        components.build(section, "agent", base=Agent, obs_dim=3, act_dim=2, num_tasks=2)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"valid: .*hidden.*layers"):
        components.build({"_target_": "agents.sac.MultiTaskSAC", "hiden": 8}, "agent", base=Agent,
                         obs_dim=3, act_dim=2, num_tasks=2)


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "agent").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_agent_config_resolves_to_an_agent(path: Path):
    section = components.group_option("agent", path.stem)   # a variant over the config it extends
    assert issubclass(components.target_of(section, "agent", Agent), Agent)
    assert section["kind"] == path.stem
