"""The per-task replay buffer: stratified batches, the ring, state round trips, and a
checkpoint that holds the filled part only (not the capacity)."""

import io

import numpy as np
import pytest
import torch

from mtrl.replay import ReplayBuffer

K, OBS, ACT = 3, 4, 2


def fill(buf, n, start=0):
    for t in range(start, start + n):
        v = np.full((K,), t, dtype=np.float32)
        obs = np.repeat(v[:, None], OBS, 1) + np.arange(K)[:, None] * 1000   # task i's obs start at 1000 i
        buf.add(obs, np.zeros((K, ACT)), v, obs + 1, np.zeros(K, dtype=bool))


def saved_bytes(buf) -> int:
    out = io.BytesIO()
    torch.save(buf.state_dict(), out)
    return out.tell()


def test_batches_are_stratified_by_task():
    buf = ReplayBuffer(K, OBS, ACT, capacity=30)
    fill(buf, 7)
    batch = buf.sample(12, torch.Generator().manual_seed(0))
    assert batch["obs"].shape == (K, 4, OBS) and batch["reward"].shape == (K, 4)
    task_of_row = (batch["obs"][..., 0] // 1000).long()
    assert (task_of_row == torch.arange(K)[:, None]).all()          # row i holds task i's samples only
    assert batch["reward"].max() <= 6


def test_the_ring_overwrites_the_oldest_transitions():
    buf = ReplayBuffer(K, OBS, ACT, capacity=15)                     # 5 per task
    fill(buf, 8)
    assert buf.size == 5 and buf.pos == 3
    assert sorted(buf.data["reward"][0].tolist()) == [3, 4, 5, 6, 7]


def test_state_round_trip_continues_identically():
    a = ReplayBuffer(K, OBS, ACT, capacity=60)
    fill(a, 9)
    b = ReplayBuffer(K, OBS, ACT, capacity=60)
    b.load_state_dict(a.state_dict())
    for buf in (a, b):
        fill(buf, 3, start=100)
    ga, gb = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    sa, sb = a.sample(30, ga), b.sample(30, gb)
    for key, v in sa.items():
        assert torch.equal(v, sb[key]), key
    with pytest.raises(ValueError, match="different shape"):
        ReplayBuffer(K, OBS, ACT, capacity=90).load_state_dict(a.state_dict())


def test_checkpoint_size_grows_with_the_filled_part_not_the_capacity():
    """The bug: a slice of the full buffer was saved, and torch.save writes the slice's
    whole storage, so every checkpoint held the capacity from the first save."""
    small, large = ReplayBuffer(K, OBS, ACT, capacity=300_000), ReplayBuffer(K, OBS, ACT, capacity=3_000)
    fill(small, 10)
    fill(large, 10)
    capacity_bytes = sum(v.numel() * 4 for v in small.data.values())
    ten = saved_bytes(small)
    assert ten < capacity_bytes / 100
    assert abs(ten - saved_bytes(large)) < 200          # the same 10 transitions, whatever the capacity
    fill(small, 990, start=10)
    thousand = saved_bytes(small)
    per_transition = K * (2 * OBS + ACT + 2) * 4
    assert thousand - ten == pytest.approx(990 * per_transition, rel=0.02)
