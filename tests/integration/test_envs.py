"""Tests of the multi-task vector envs: the interface contract, seeding, the two MetaWorld
protocols and the auto-reset semantics.  MetaWorld builds are kept few (MT10 once, MT50
once with one goal variant per task, the rest single-task MT1)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import envs
from envs import MultiTaskVecEnv, StepResult, make_env

MT10_TASKS = [
    "reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
    "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3",
]


def check_step_result(env: MultiTaskVecEnv, res: StepResult) -> None:
    k, d = env.num_tasks, env.obs_dim
    assert isinstance(res, StepResult)
    for field in ("next_obs", "obs"):
        arr = getattr(res, field)
        assert arr.shape == (k, d) and arr.dtype == np.float32, field
    assert res.reward.shape == (k,) and res.reward.dtype == np.float32
    for field in ("terminated", "truncated", "success"):
        arr = getattr(res, field)
        assert arr.shape == (k,) and arr.dtype == np.bool_, field


def rollout(env: MultiTaskVecEnv, actions: np.ndarray, seed: int | None = None):
    """Observations, rewards and step results of one fixed action sequence."""
    obs = [env.reset(seed=seed)]
    rewards, results = [], []
    for a in actions:
        res = env.step(a)
        obs.append(res.next_obs)
        rewards.append(res.reward)
        results.append(res)
    return np.array(obs), np.array(rewards), results


# ---------------------------------------------------------------- point mass


def p_controller(env, obs: np.ndarray) -> np.ndarray:
    return np.clip(5.0 * (env.goal_positions() - obs[:, :2]) - 0.5 * obs[:, 2:], -1.0, 1.0)


def test_point_mass_interface_and_protocol():
    env = make_env("point_mass", seed=0, num_tasks=6)
    assert env.num_tasks == 6 and len(env.task_names) == 6
    assert (env.obs_dim, env.act_dim, env.max_episode_steps) == (4, 2, 50)
    assert env.action_low.dtype == np.float32 and np.all(env.action_low == -1) and np.all(env.action_high == 1)
    goals = env.goal_positions()
    np.testing.assert_allclose(np.linalg.norm(goals, axis=1), 0.7)
    angles = np.sort(np.mod(np.arctan2(goals[:, 1], goals[:, 0]), 2 * np.pi))
    np.testing.assert_allclose(np.diff(angles), 2 * np.pi / 6)
    obs = env.reset()
    assert obs.shape == (6, 4) and obs.dtype == np.float32
    assert np.all(np.abs(obs[:, :2]) <= 0.1) and np.all(obs[:, 2:] == 0)  # near the origin, at rest
    check_step_result(env, env.step(np.zeros((6, 2))))
    json.dumps(env.protocol)
    assert env.protocol["seed"] == 0 and env.protocol["task_id_in_obs"] is False
    assert make_env("point_mass").num_tasks == 4


def test_point_mass_seeding():
    actions = np.random.default_rng(0).uniform(-1, 1, (60, 4, 2))
    o1, r1, _ = rollout(make_env("point_mass", seed=3), actions)
    o2, r2, _ = rollout(make_env("point_mass", seed=3), actions)
    o3, _, _ = rollout(make_env("point_mass", seed=4), actions)
    np.testing.assert_array_equal(o1, o2)
    np.testing.assert_array_equal(r1, r2)
    assert not np.array_equal(o1[0], o3[0])
    # reset(seed=s) is the state of a fresh env built with seed s
    env = make_env("point_mass", seed=9)
    env.reset()
    env.step(np.ones((4, 2)))
    np.testing.assert_array_equal(env.reset(seed=3), o1[0])


def test_point_mass_time_limit_and_autoreset():
    env = make_env("point_mass", seed=1, episode_length=20)
    obs = env.reset()
    for t in range(1, 41):
        res = env.step(np.ones((4, 2)))
        check_step_result(env, res)
        assert not res.terminated.any()
        if t % 20:
            assert not res.truncated.any()
            np.testing.assert_array_equal(res.obs, res.next_obs)
        else:  # every task truncates together; next_obs is the last state, obs the reset state
            assert res.truncated.all()
            assert np.all(res.next_obs[:, :2] > 0.5)  # pushed towards the (1, 1) corner
            assert np.all(np.abs(res.obs[:, :2]) <= 0.1) and np.all(res.obs[:, 2:] == 0)
        obs = res.obs
    assert obs.shape == (4, 4)


def test_point_mass_walls_and_clipping():
    env = make_env("point_mass", seed=0, num_tasks=2)
    env.reset()
    for _ in range(30):
        res = env.step(np.full((2, 2), 100.0))  # clipped to 1
    assert np.all(res.next_obs[:, :2] == 1.0) and np.all(res.next_obs[:, 2:] == 0.0)
    with pytest.raises(ValueError):
        env.step(np.zeros((3, 2)))
    with pytest.raises(ValueError):
        env.step(np.full((2, 2), np.nan))


def test_point_mass_controller_succeeds_zero_action_does_not():
    env = make_env("point_mass", seed=0, num_tasks=8)
    obs, hit, ret = env.reset(), np.zeros(8, bool), np.zeros(8)
    for _ in range(env.max_episode_steps):
        res = env.step(p_controller(env, obs))
        hit |= res.success
        ret += res.reward
        obs = res.obs
    assert hit.all() and res.success.all()  # reached and stays
    zero_ret = np.zeros(8)
    env.reset()
    for _ in range(env.max_episode_steps):
        res = env.step(np.zeros((8, 2)))
        assert not res.success.any()
        zero_ret += res.reward
    assert np.all(ret > zero_ret + 20)  # dense reward separates them clearly


def test_step_before_reset_raises():
    with pytest.raises(RuntimeError):
        make_env("point_mass").step(np.zeros((4, 2)))


# ---------------------------------------------------------------- names and arguments


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("cartpole", {}),
        ("mt20", {}),
        ("mt1:no-such-task-v3", {}),
        ("mt10", {"protocol": "papers"}),
        ("mt10", {"reward_version": "v3"}),
        ("mt10", {"seed": -1}),
        ("mt10", {"seed": 1.5}),
        ("mt10", {"episodes": 3}),
        ("point_mass", {"protocol": "metaworld3"}),
        ("point_mass", {"reward_version": "v1"}),
        ("point_mass", {"goals": 3}),
    ],
)
def test_invalid_arguments_raise_value_error(name, kwargs):
    with pytest.raises(ValueError) as info:
        make_env(name, **kwargs)
    assert "valid" in str(info.value) or "must" in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="point_mass, mt10, mt50, mt1:<task>"):
        make_env("nope")
    assert envs.ENV_NAMES == ("point_mass", "mt10", "mt50", "mt1:<task>")


# ---------------------------------------------------------------- MetaWorld


@pytest.fixture(scope="module")
def mt10():
    env = make_env("mt10", protocol="paper", seed=0)
    yield env
    env.close()


@pytest.mark.slow
def test_mt10_paper_interface_and_time_limit(mt10):
    env = mt10
    assert env.num_tasks == 10 and env.task_names == MT10_TASKS
    assert (env.obs_dim, env.act_dim, env.max_episode_steps) == (39, 4, 150)
    p = env.protocol
    assert (p["env"], p["protocol"], p["episode_length"], p["reward_version"], p["seed"]) == ("mt10", "paper", 150, "v2", 0)
    assert p["task_id_in_obs"] is False
    json.dumps(p)
    obs0 = env.reset()
    assert obs0.shape == (10, 39) and obs0.dtype == np.float32
    goals = env.goal_positions()
    np.testing.assert_allclose(obs0[:, 36:39], goals, atol=1e-6)  # goal is the last 3 dims
    rng = np.random.default_rng(0)
    obs = obs0
    for t in range(1, 301):  # two episodes: never steps past MetaWorld's limit
        res = env.step(rng.uniform(-1, 1, (10, 4)))
        check_step_result(env, res)
        assert not res.terminated.any()
        if t % 150:
            assert not res.truncated.any()
            np.testing.assert_array_equal(res.obs, res.next_obs)
        else:
            assert res.truncated.all()
            assert not np.array_equal(res.next_obs, res.obs)
            # fixed goal and deterministic MetaWorld resets: the auto-reset observation is
            # the first one again, the last observation still shows the same goal
            np.testing.assert_array_equal(res.obs, obs0)
            np.testing.assert_allclose(res.next_obs[:, 36:39], goals, atol=1e-6)
        obs = res.obs
    np.testing.assert_array_equal(env.goal_positions(), goals)
    env.reset(seed=123)
    np.testing.assert_array_equal(env.goal_positions(), goals)


def _fields(res: StepResult) -> tuple:
    return (res.next_obs, res.reward, res.terminated, res.truncated, res.success, res.obs)


@pytest.mark.slow
def test_mt10_async_steps_the_same_transitions_in_subprocesses(mt10):
    """env.vector=async: one subprocess per task, the same transitions (bit for bit) as the
    in-process vector, across an episode boundary and a seeded reset; step_async lets the
    caller work while the tasks step."""
    fast = make_env("mt10", protocol="paper", seed=0, vector="async")
    try:
        assert fast.task_names == mt10.task_names and fast.protocol == mt10.protocol
        np.testing.assert_array_equal(fast.goal_positions(), mt10.goal_positions())
        actions = np.random.default_rng(3).uniform(-1, 1, (160, 10, 4))
        np.testing.assert_array_equal(fast.reset(seed=11), mt10.reset(seed=11))
        for t, a in enumerate(actions):
            fast.step_async(a)
            ref = mt10.step(a)
            got = fast.step_wait()
            for x, y in zip(_fields(got), _fields(ref)):
                np.testing.assert_array_equal(x, y)
            assert got.truncated.all() == (t == 149)
        with pytest.raises(ValueError, match="unknown vector strategy"):
            make_env("mt10", vector="threads")
    finally:
        fast.close()


def test_step_async_then_wait_is_step():
    a, b = make_env("point_mass", seed=1), make_env("point_mass", seed=1)
    a.reset(seed=2), b.reset(seed=2)
    act = np.full((a.num_tasks, a.act_dim), 0.3, dtype=np.float32)
    with pytest.raises(RuntimeError, match="without step_async"):
        a.step_wait()
    a.step_async(act)
    with pytest.raises(RuntimeError, match="twice"):
        a.step_async(act)
    for x, y in zip(_fields(a.step_wait()), _fields(b.step(act))):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_mt1_paper_seeding_and_fixed_goal():
    actions = np.random.default_rng(1).uniform(-1, 1, (40, 1, 4))
    a = make_env("mt1:reach-v3", seed=5)
    b = make_env("mt1:reach-v3", seed=5)  # e.g. the evaluation env of the same run
    c = make_env("mt1:push-v3", seed=5)
    d = make_env("mt1:reach-v3", seed=6)
    assert a.task_names == ["reach-v3"] and a.protocol["benchmark"] == "MT1" and a.protocol["env"] == "mt1:reach-v3"
    assert c.task_names == ["push-v3"]
    np.testing.assert_array_equal(a.goal_positions(), b.goal_positions())
    assert not np.allclose(a.goal_positions(), d.goal_positions())
    oa, ra, _ = rollout(a, actions)
    ob, rb, _ = rollout(b, actions)
    np.testing.assert_array_equal(oa, ob)
    np.testing.assert_array_equal(ra, rb)
    goal = a.goal_positions()
    for seed in (None, 1, 2):
        a.reset(seed=seed)
        np.testing.assert_array_equal(a.goal_positions(), goal)
    for env in (a, b, c, d):
        env.close()


def test_mt1_metaworld3_random_goals_and_500_steps():
    env = make_env("mt1:reach-v3", protocol="metaworld3", seed=2)
    assert env.max_episode_steps == 500 and env.protocol["episode_length"] == 500
    assert env.protocol["protocol"] == "metaworld3" and env.protocol["goal_policy"].startswith("random")
    goals = set()
    for _ in range(6):
        env.reset()
        goals.add(tuple(env.goal_positions()[0]))
    assert len(goals) > 1  # a new goal variant per reset
    # reset(seed=s) re-seeds the goal draw (from the variants the construction seed made):
    # the first episode of a fresh env built with seed s draws the same
    fresh = make_env("mt1:reach-v3", protocol="metaworld3", seed=2)
    np.testing.assert_array_equal(env.reset(seed=2), fresh.reset())
    np.testing.assert_array_equal(env.reset(seed=11), fresh.reset(seed=11))
    episode_goal = env.goal_positions()[0]
    zeros = np.zeros((1, 4))
    for t in range(1, 501):
        res = env.step(zeros)
        assert not res.terminated.any()
        assert res.truncated.all() == (t == 500)
    # next_obs shows the finished episode's goal, obs the auto-reset episode's (drawn anew)
    np.testing.assert_allclose(res.next_obs[0, 36:39], episode_goal, atol=1e-6)
    np.testing.assert_allclose(res.obs[0, 36:39], env.goal_positions()[0], atol=1e-6)
    assert not np.array_equal(res.obs, res.next_obs)
    env.step(zeros)  # continues after the auto-reset
    env.close()
    fresh.close()


def test_mt1_success_flag_with_scripted_policy_and_reward_versions():
    from metaworld.policies import SawyerReachV3Policy

    policy = SawyerReachV3Policy()
    returns = {}
    for version in ("v2", "v1"):
        env = make_env("mt1:reach-v3", seed=0, reward_version=version)
        assert env.protocol["reward_version"] == version
        obs, hit, total = env.reset(), False, 0.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(env.max_episode_steps):
                res = env.step(policy.get_action(obs[0].astype(np.float64))[None])
                hit |= bool(res.success[0])
                total += float(res.reward[0])
                obs = res.obs
        assert hit and res.success[0]  # success at the final step comes from final_info
        returns[version] = total
        env.close()
    assert returns["v1"] != returns["v2"]


@pytest.mark.slow
def test_mt50_construction_and_steps():
    env = make_env("mt50", seed=0, num_goals=1)  # one goal variant per task: faster to build
    assert env.num_tasks == 50 and len(set(env.task_names)) == 50 and env.obs_dim == 39
    assert env.protocol["num_goal_variants"] == 1
    obs = env.reset()
    assert obs.shape == (50, 39)
    for _ in range(3):
        res = env.step(np.zeros((50, 4)))
        check_step_result(env, res)
    env.close()
    import metaworld

    assert metaworld._N_GOALS == 50  # the package's global is restored
