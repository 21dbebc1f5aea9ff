"""mtrl.distributed: the processes of a run from torchrun's variables, or from the SLURM
tasks of a job that Hydra's submitit launcher started (tasks_per_node)."""

from __future__ import annotations

import os

import pytest

from mtrl import distributed

TORCHRUN = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")


@pytest.fixture
def clean_env(monkeypatch):
    for key in (*TORCHRUN, "SUBMITIT_EXECUTOR", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    yield monkeypatch
    for key in TORCHRUN:   # the SLURM export writes os.environ directly
        os.environ.pop(key, None)


def test_one_process_without_a_launcher(clean_env):
    assert distributed.world_size() == 1 and not distributed.launched()
    assert distributed.start("cpu") == distributed.Process()


def test_torchrun_variables_give_the_world(clean_env):
    clean_env.setenv("WORLD_SIZE", "4")
    clean_env.setenv("TORCHELASTIC_RUN_ID", "x")
    assert distributed.world_size() == 4 and distributed.launched() and distributed.under_torchrun()


def test_the_slurm_tasks_of_a_submitit_job_are_the_processes(clean_env):
    for key, value in {"SUBMITIT_EXECUTOR": "slurm", "SLURM_NTASKS": "4", "SLURM_PROCID": "3", "SLURM_LOCALID": "1",
                       "SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_JOB_NUM_NODES": "2",
                       "SLURM_NODEID": "1"}.items():
        clean_env.setenv(key, value)
    assert distributed.world_size() == 4
    assert (os.environ["RANK"], os.environ["LOCAL_RANK"], os.environ["MASTER_ADDR"]) == ("3", "1", "gpu01")
    assert not distributed.under_torchrun()
    assert "CUDA_VISIBLE_DEVICES" not in os.environ or os.environ["CUDA_VISIBLE_DEVICES"] != "1"


def test_a_single_task_job_stays_one_process(clean_env):
    clean_env.setenv("SUBMITIT_EXECUTOR", "slurm")
    clean_env.setenv("SLURM_NTASKS", "1")
    assert distributed.world_size() == 1 and "RANK" not in os.environ
