"""Supervised multi-task training with any aggregator of the library.

One step: forward the batch, the k task losses, then :func:`aggregators.backward` fills
the gradients (the shared encoder gets the aggregated direction; loss-only methods do one
ordinary backward) and the optimiser steps.  The heads receive the gradient of
``sum_i w_i l_i`` (``train.task_grads: weighted``), as in the reference code whose
published rows these benchmarks reproduce.  Modes (``mode``):

* ``param``: the method aggregates the per-task gradients of the shared parameters;
* ``rep`` (the "-UB" variants of Senushkin et al. (CVPR 2023) and Mao et al., arXiv 2024): it aggregates the per-task
  gradients of the shared representation z, and the aggregated ``d_z`` goes back through
  the encoder once.

A method with a lower level (ConsMTL, eqs. 6-8, Alg. 1) gets the model's heads and the
representation z: the engine updates head i with ``grad l_i + clip(grad L_i^extra)``,
``L_i^extra = -lam <d l_i / d z, d_z>``, ``d_z = sum_j alpha_j d l_j / d z`` detached
(Prop. 3.1), the extra gradient clipped to ``clip_ratio`` times the task gradient's norm
on that head (the authors' clip).

Under ``torchrun --nproc_per_node R`` (:mod:`mtrl.distributed`) each process trains on
its shard of every batch (``train.batch_size`` is the global batch, B / R per process,
``DistributedSampler``) and the aggregated backward all-reduces what makes every process
apply the union batch's update (:mod:`aggregators.distributed`: exact by default,
``dist.gram_only=true`` for the Gram-matrix approximation).  On CUDA, batch norm layers
become ``SyncBatchNorm`` (the union's statistics); on the CPU, where it does not run,
each process normalises with its own shard's statistics, as plain data parallelism
does.  The processes share an evaluation's forward passes and process 0 updates the
metric state with every batch in the one-process order (:meth:`SupervisedTrainer.evaluate`),
then broadcasts the values, so every process feeds the same dm_i to the method; process 0
alone writes the run directory.  Checkpoints hold no world size:
a run resumes under any.

Once per epoch the selection split (``val``, or ``train`` where the benchmark has none)
is evaluated: its per-task drops dm_i (PIVRG eq. 3, ``mtrl.metrics``) feed the
performance-informed aggregators and pick the reported epoch; the test split is
evaluated too.  Every epoch appends one line to ``metrics.jsonl`` and writes an atomic
checkpoint; a killed run resumes from the last finished epoch.
"""

from __future__ import annotations

import copy
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import aggregators
from aggregators.distributed import Reducer, check_method

from .. import config_checks
from .. import distributed
from .. import metrics as mtl_metrics
from ..run_files import CheckpointError, load_checkpoint, save_checkpoint
from ..host_memory import keep_freed_memory
from ..configuration import ConfigError, build_aggregator, resolve_device
from ..metrics_log import RunLogger
from ..run_files import write_json_atomic
from ..run_identity import SUPERVISED_KEYS, check_continuation
from .benchmarks.base import Benchmark
from .data.errors import DataError, DatasetNotFound
from .registry import benchmark_metrics, build_benchmark

CHECKPOINT_FORMAT = 2
MODES = config_checks.SUPERVISED_RULES["mode"].values
#: ``train.amp``: the forward's autocast dtype
AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def prepare_config(cfg: dict, world: int | None = None) -> dict:
    """The checked config a run uses (:func:`mtrl.config_checks.prepare` with the supervised
    rules; the run's benchmark is a valid aggregator preset even where the references
    publish no values for it); every bad value is a one-line ConfigError.  With ``world``
    processes (default: torchrun's ``WORLD_SIZE``), also what they need: a global batch
    they share evenly and a method with a data-parallel form."""
    own = (cfg.get("benchmark") or {}).get("name")
    cfg = config_checks.prepare(cfg, config_checks.SUPERVISED_RULES, known_presets=(own,) if own else ())
    world = distributed.world_size() if world is None else world
    if world > 1:
        batch = int(cfg["train"]["batch_size"])
        if batch % world:
            raise ConfigError(f"train.batch_size={batch} is the global batch and must be a multiple of the "
                              f"{world} processes (each takes batch_size / {world})")
        k = len({m.task for m in benchmark_metrics(cfg["benchmark"])})
        try:
            check_method(build_aggregator(cfg["aggregator"], k), _gram_only(cfg),
                         representation=cfg.get("mode") == "rep")
        except ValueError as exc:
            raise ConfigError(f"{exc} (this run has {world} processes)") from None
    return cfg


def _gram_only(cfg: dict) -> bool:
    """``dist.gram_only``: all-reduce Gram matrices instead of per-task gradients."""
    return bool((cfg.get("dist") or {}).get("gram_only", False))


def delta_m_report(values: dict[str, float], bench: Benchmark) -> dict:
    """Metric values against the benchmark's single-task baselines (``mtrl.metrics``): dm%,
    per-task dm_i, Var[dm_i], the variance over the per-metric drops (what PIVRG's tables
    print; equal to Var[dm_i] when each task has one metric) and the task-weighted dm."""
    args = ([values[m.name] for m in bench.metrics], [m.baseline for m in bench.metrics],
            [m.higher_is_better for m in bench.metrics])
    tasks = [m.task for m in bench.metrics]
    dm_i = mtl_metrics.delta_m_per_task(*args, tasks)
    return {"delta_m": mtl_metrics.delta_m(*args), "delta_m_i": dm_i,
            "delta_m_var": mtl_metrics.delta_m_variance(dm_i),
            "delta_m_var_metrics": mtl_metrics.delta_m_variance(mtl_metrics.per_metric_delta(*args)),
            "task_weighted_delta_m": mtl_metrics.task_weighted_delta_m(*args, tasks)}


def selection_score(values: dict[str, float], bench: Benchmark) -> tuple[float, dict[str, float]]:
    """(dm%, per-task dm_i) of metric values against the benchmark's baselines."""
    report = delta_m_report(values, bench)
    return report["delta_m"], report["delta_m_i"]


class SupervisedTrainer:
    """Train ``cfg["benchmark"]`` with ``cfg["aggregator"]`` (see ``configs/supervised.yaml``)."""

    def __init__(self, cfg: dict, run_dir: str | Path, benchmark: Benchmark | None = None,
                 process: distributed.Process | None = None):
        self.process = process or distributed.Process()
        cfg = prepare_config(copy.deepcopy(cfg), self.process.world)
        keep_freed_memory()
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.seed = int(cfg["seed"])
        self.device = resolve_device(str(cfg.get("device", "auto")))
        if self.process.parallel and self.device.type == "cuda":
            self.device = torch.device("cuda", self.process.local_rank)
        t = cfg["train"]
        self.epochs = int(t["epochs"])
        self.batch_size = int(t["batch_size"])
        #: each process's share of a batch (prepare_config checked that it divides)
        self.shard_batch = self.batch_size // self.process.world
        self.eval_batch_size = int(t.get("eval_batch_size") or self.batch_size)
        self.max_batches = t.get("max_batches")
        self.log_every = int(t.get("log_every", 50))
        self.diagnostics_every = int(t.get("diagnostics_every", 0))
        self.per_task = t.get("per_task_grads", "auto")
        self.task_grads = t.get("task_grads", "weighted")
        self.mode = cfg.get("mode", "param")
        #: autocast's dtype (None: float32), and fp16's loss scaler
        self.amp = AMP_DTYPES[t.get("amp", "off")]
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp == torch.float16 else None
        random.seed(self.seed)
        np.random.seed(self.seed)
        torch.manual_seed(self.seed)

        try:
            self.bench = benchmark or build_benchmark(cfg["benchmark"], cfg.get("data", {}).get("root"))
        except (DatasetNotFound, DataError) as exc:
            raise ConfigError(str(exc)) from None
        k = self.bench.num_tasks
        try:
            self.model = self.bench.build_model(**(cfg.get("model") or {})).to(self.device)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"model options {cfg.get('model')} do not fit benchmark {self.bench.name}: {exc}") from None
        except FileNotFoundError as exc:   # model.weights=PATH that is not there
            raise ConfigError(str(exc)) from None
        if self.process.parallel and self.device.type == "cuda":   # batch statistics of the union batch
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.agg = build_aggregator(cfg["aggregator"], k).to(self.device)
        #: what the aggregated backward all-reduces (None: one process)
        self.reducer = None
        if self.process.parallel:
            self.reducer = Reducer(gram_only=_gram_only(cfg))
        if self.mode == "rep" and self.agg.coordinate_state:
            raise ConfigError(f"mode=rep: {self.agg.name} keeps per-coordinate gradient statistics across steps, "
                              f"and the representation's coordinates are the samples of each batch: use mode=param")
        self.lower_level = self.agg.has_lower_level
        self.after_step = aggregators.needs_after_step(self.agg)
        if self.lower_level and len(self.model.heads) != k:
            raise ConfigError(f"ConsMTL's lower level needs one head per task ({k}), the model has {len(self.model.heads)}")
        #: each task's head parameters, for a method with a lower level (the engine's hook)
        self.heads = [list(h.parameters()) for h in self.model.heads] if self.lower_level else None
        params = list(self.model.parameters()) + [p for p in self.agg.parameters() if p.requires_grad]
        self.optimizer = _optimizer(t, params)
        self.scheduler = _scheduler(t.get("scheduler") or {"name": "none"}, self.optimizer, self.epochs)
        self.epoch = 0
        self.step = 0
        self.last_layer: dict[str, float] | None = None
        # sum over all steps of the weights the method applied, and the step count (Guo et al. (arXiv 2025)'s
        # Tables VI-VII report the mean loss weight over the training)
        self.weights_sum = torch.zeros(self.bench.num_tasks, dtype=torch.float64)
        self.weights_steps = 0
        self.best = {"score": math.inf, "epoch": None, "test": None, "selection": None}
        self.recent: list[tuple[int, dict]] = []   # (epoch, test metrics) of the last report_last_epochs
        self.evaluations: list[dict] = []          # the metrics.jsonl records so far (kept in the checkpoint)

        self.ckpt_path = self.run_dir / "checkpoints" / "latest.pt"
        resumed = self.ckpt_path.exists()
        self.changed: list[tuple[str, object, object]] = []
        if resumed:
            self._restore(load_checkpoint(self.ckpt_path))
        distributed.broadcast_state(self.model, self.process)   # replicas start equal
        #: process 0's log of the run directory (None on the other processes: they write nothing)
        self.log = None
        if self.process.main:
            self.log = RunLogger(self.run_dir, resume_step=self.epoch if resumed else None,
                                 evaluations=self.evaluations if resumed else None)
            self.log.save_config(self.cfg, self.epoch, self.changed)
        self.resumed = resumed

    # -- checkpoints ------------------------------------------------------------------------
    def _state(self) -> dict:
        return {"format": CHECKPOINT_FORMAT, "config": self.cfg, "epoch": self.epoch, "step": self.step,
                "model": self.model.state_dict(), "aggregator": self.agg.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "best": self.best, "recent": self.recent, "evaluations": self.evaluations,
                "weights_sum": self.weights_sum, "weights_steps": self.weights_steps,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}}

    def _restore(self, state: dict) -> None:
        if state.get("format") != CHECKPOINT_FORMAT or "model" not in state:
            raise CheckpointError(f"{self.ckpt_path} is not a checkpoint of the supervised trainer; use a new run directory")
        try:
            self.changed = check_continuation(state["config"], self.cfg, SUPERVISED_KEYS, str(self.ckpt_path))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        try:
            self.model.load_state_dict(state["model"])
            self.agg.load_state_dict(state["aggregator"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.scaler is not None and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{self.ckpt_path} does not fit this run ({exc}); use a new run directory") from None
        self.epoch, self.step, self.best = int(state["epoch"]), int(state["step"]), state["best"]
        self.recent = [tuple(r) for r in state.get("recent", [])]
        self.evaluations = list(state["evaluations"])
        self.weights_sum = state.get("weights_sum", self.weights_sum).to(torch.float64).cpu()
        self.weights_steps = int(state.get("weights_steps", 0))
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])

    # -- one step ----------------------------------------------------------------------------
    def train_step(self, batch) -> aggregators.BackwardResult:
        """Forward, aggregated backward (plus ConsMTL's lower level), optimiser step."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            z = self.model.encode(self.bench.inputs(batch))
            outputs = self.model.decode(z)
            losses = self.bench.task_losses(outputs, batch)
        losses = losses.float()
        self.last_outputs = [o.detach().float() for o in outputs]
        # the scaler's current scale, as it scales a unit loss (which also starts it on the first step)
        scale = 1.0 if self.scaler is None else float(self.scaler.scale(torch.ones((), device=self.device)))
        names = tuple(self.bench.tasks)
        diag = self.diagnostics_every > 0 and self.step % self.diagnostics_every == 0
        shared = self.model.shared_parameters()
        last = self._last_layer_grads(losses) if diag else None
        info = aggregators.backward(list(losses), shared, self.agg, features=z if self.mode == "rep" else None,
                                    diagnostics=diag, task_names=names, per_task=self.per_task,
                                    task_grads=self.task_grads, heads=self.heads, representation=z,
                                    reducer=self.reducer, loss_scale=scale,
                                    nonfinite="raise" if self.scaler is None else "skip")
        self.last_layer = None if last is None else _last_layer_scalars(last, names)
        if self.scaler is None:
            self.optimizer.step()
        elif info.finite:   # GradScaler unscales the scaled gradients, checks them and steps (or not)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:               # the scaled losses or per-task gradients overflowed: nothing written, back off
            self.scaler.update(scale * self.scaler.get_backoff_factor())
            return info
        if self.after_step:  # FAMO: the losses of the updated model on the same batch (the union's)
            with torch.no_grad():
                after = self.bench.task_losses(self.model(self.bench.inputs(batch)), batch)
                self.agg.after_step(after if self.reducer is None else self.reducer.mean([after])[0])
        return info

    def _last_layer_grads(self, losses: torch.Tensor) -> tuple[torch.Tensor, list]:
        """(k per-task gradients on the last shared layer (k, n), its parameters): the
        imbalance signal of Guo et al. (arXiv 2025); the applied update on them is read after the backward."""
        params = self.model.last_shared_parameters()
        path = "loop" if self.per_task == "loop" else "batched"
        return aggregators.task_gradients(losses, params, per_task=path), params

    # -- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float] | None:
        """The metrics of ``split``.  Under R processes every process calls this: process r
        runs the forward of batches r, r + R, ...; process 0 gathers each group of R
        batches' outputs and updates the metric state with them in the one-process order,
        so the values are the one-process values; it returns them (the others None)."""
        self.model.eval()
        state = self.bench.metric_state() if self.process.main else None
        world, rank = self.process.world, self.process.rank
        mine = None   # this process's batch of the current group of R: (outputs, batch) on the CPU
        cpu = torch.device("cpu")
        loader = self.bench.loader(split, self.eval_batch_size, shuffle=False)
        n = len(loader) if self.max_batches is None else min(len(loader), int(self.max_batches))
        for i, batch in enumerate(loader):
            if i >= n:
                break
            if world == 1:
                batch = self.bench.to_device(batch, self.device)
                state.update(self.model(self.bench.inputs(batch)), batch)
                continue
            if i % world == rank:
                outputs = self.model(self.bench.inputs(self.bench.to_device(batch, self.device)))
                mine = ([o.to(cpu) for o in outputs], batch)   # the batch as the loader gave it (CPU)
            if i % world == world - 1 or i == n - 1:   # a group of R batches (or the last, shorter one)
                for item in distributed.gather(mine, self.process) or []:
                    if item is not None:
                        state.update([o.to(self.device) for o in item[0]], self.bench.to_device(item[1], self.device))
                mine = None
        return state.compute() if state is not None else None

    def _feed_performance(self, dm_i: dict[str, float]) -> None:
        if self.agg.uses_performance:
            self.agg.update_performance(torch.tensor([dm_i[t] for t in self.bench.tasks], dtype=torch.float64))

    # -- the loop ----------------------------------------------------------------------------
    def train(self) -> dict:
        """Train (or continue) to ``train.epochs``; returns the final results (also saved
        to ``results.json``)."""
        sel = self.bench.selection_split
        while self.epoch < self.epochs:
            t0 = time.perf_counter()
            train_state = self.bench.train_metric_state()
            loader = self.bench.loader("train", self.shard_batch, shuffle=True, seed=self.seed * 100_003 + self.epoch,
                                       shard=(self.process.rank, self.process.world))
            n = len(loader) if self.max_batches is None else min(len(loader), int(self.max_batches))
            losses_sum = torch.zeros(self.bench.num_tasks, dtype=torch.float64, device=self.device)
            weights_sum = torch.zeros(self.bench.num_tasks, dtype=torch.float64, device=self.device)
            weighted_steps = 0
            bar = tqdm(loader, total=n, desc=f"epoch {self.epoch + 1}/{self.epochs}", unit="batch",
                       dynamic_ncols=True, mininterval=1.0, leave=False, disable=not self.process.main)
            for i, batch in enumerate(bar):
                if i >= n:
                    break
                batch = self.bench.to_device(batch, self.device)
                info = self.train_step(batch)
                train_state.update(self.last_outputs, batch)
                losses_sum += info.losses.to(torch.float64)
                if info.weights is not None:
                    weights_sum += info.weights.detach().to(device=self.device, dtype=torch.float64)
                    weighted_steps += 1
                self.step += 1
                if self.log is None:
                    continue
                if self.step % self.log_every == 0 or info.diagnostics is not None:
                    self.log.scalars({f"train/{k}": v for k, v in info.log_dict().items()}, self.step)
                if self.last_layer is not None:
                    self.log.scalars({f"train/{k}": v for k, v in self.last_layer.items()}, self.step)
            bar.close()
            self.agg.end_epoch()
            # process 0's shard for the training metrics, whole splits (sharded forwards) for the others
            values = {"train": train_state.compute()}
            for split in ("val", "test"):
                if split in self.bench.splits and split != "train":
                    values[split] = self.evaluate(split)
            values = distributed.broadcast(values, self.process)
            dm, dm_i = selection_score(values[sel], self.bench)
            self._feed_performance(dm_i)
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step(dm)
            else:
                self.scheduler.step()
            self.epoch += 1
            score = self.bench.selection_value(values[sel], dm)
            last = self.bench.report_last_epochs
            if last and "test" in values:
                self.recent = (self.recent + [(self.epoch, values["test"])])[-last:]
            if score < self.best["score"]:
                self.best = {"score": score, "epoch": self.epoch, "test": values.get("test"), "selection": values[sel]}
            record = {"step": self.epoch, "epoch": self.epoch, "updates": self.step, "seconds": time.perf_counter() - t0,
                      "lr": self.optimizer.param_groups[0]["lr"],
                      "train_loss": dict(zip(self.bench.tasks, (losses_sum / max(n, 1)).tolist())),
                      "metrics": values, f"{sel}_delta_m": dm, f"{sel}_delta_m_i": dm_i}
            if "test" in values:
                record["test_delta_m"], record["test_delta_m_i"] = selection_score(values["test"], self.bench)
            if self.agg.weights is not None:
                record["weights"] = self.agg.weights.detach().cpu().tolist()
            if weighted_steps:
                record["mean_weights"] = dict(zip(self.bench.tasks, (weights_sum / weighted_steps).tolist()))
                self.weights_sum += weights_sum.cpu()
                self.weights_steps += weighted_steps
            if self.agg.uses_performance:
                record["omega"] = self.agg.omega.detach().cpu().tolist()
            self.evaluations.append(record)
            if self.log is None:
                continue
            self.log.evaluation(record)
            self.log.scalars({f"{sel}/delta_m": dm, **{f"{sel}/delta_m_i/{t}": v for t, v in dm_i.items()},
                              **{f"{s}/{m}": v for s, vals in values.items() for m, v in vals.items()}}, self.epoch)
            save_checkpoint(self._state(), self.ckpt_path)
            print(f"epoch {self.epoch}: {sel} dm% {dm:+.2f}" + (f", test dm% {record['test_delta_m']:+.2f}"
                                                              if "test" in record else ""))
        results = self.results()
        if self.log is not None:
            write_json_atomic(self.run_dir / "results.json", results)
            self.log.save_status("finished", self.epoch)
        return results

    def results(self) -> dict:
        """The papers' numbers: the test metrics (at the epoch with the best selection
        score, or their mean over the last ``report_last_epochs`` epochs where the
        benchmark's protocol says so), dm%, per-task dm_i, their variance and the
        task-weighted dm."""
        test = self.best["test"] if self.best["test"] is not None else self.best["selection"]
        report = {"report": "selected epoch"}
        if self.recent:
            test = {m: float(np.mean([r[m] for _, r in self.recent])) for m in self.recent[0][1]}
            report = {"report": f"mean of the last {len(self.recent)} epochs",
                      "reported_epochs": [e for e, _ in self.recent]}
        if self.weights_steps:   # the mean weight of each task over all training steps
            report["mean_weights"] = dict(zip(self.bench.tasks, (self.weights_sum / self.weights_steps).tolist()))
        return {"benchmark": self.bench.name, "aggregator": self.cfg["aggregator"]["name"], "mode": self.mode,
                "seed": self.seed, "selected_epoch": self.best["epoch"], "selection_split": self.bench.selection_split,
                **report, "metrics": test, **delta_m_report(test, self.bench)}

    def close(self) -> None:
        if self.log is not None:
            self.log.close()


def _last_layer_scalars(last: tuple[torch.Tensor, list], names) -> dict[str, float]:
    """Per-task gradient norms on the last shared layer and each task gradient's cosine
    with the update applied there (the parameters' ``.grad`` after the backward)."""
    G, params = last
    d = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params]).to(G.dtype)
    norms = G.norm(dim=1)
    cos = (G @ d) / (norms * d.norm()).clamp(min=torch.finfo(G.dtype).tiny)
    values = torch.cat([norms, cos]).tolist()
    k = len(names)
    return {**{f"last_layer_grad_norm/{n}": values[i] for i, n in enumerate(names)},
            **{f"last_layer_cosine/{n}": values[k + i] for i, n in enumerate(names)}}


def _optimizer(t: dict, params: list) -> torch.optim.Optimizer:
    name = t.get("optimizer", "adam")
    lr, wd = float(t["lr"]), float(t.get("weight_decay", 0.0))
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(t.get("momentum", 0.9)), weight_decay=wd)
    raise ConfigError(f"train.optimizer must be adam or sgd, got {name!r}")


def _scheduler(s: dict, opt: torch.optim.Optimizer, epochs: int):
    """The protocols' schedules: ``step`` (NYU-v2 / Cityscapes: halve at epoch 100),
    ``plateau`` on the selection dm% (QM9: factor 0.7, patience 5, min lr 1e-5), ``poly``
    (Guo et al. (arXiv 2025): lr x (1 - epoch / epochs) ** power, power 0.9), ``none``."""
    name = s.get("name", "none")
    if name == "poly":
        power = float(s.get("power", 0.9))
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: max(0.0, 1 - epoch / epochs) ** power)
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=int(s["step_size"]), gamma=float(s.get("gamma", 0.5)))
    if name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=float(s.get("factor", 0.7)),
                                                          patience=int(s.get("patience", 5)),
                                                          min_lr=float(s.get("min_lr", 1e-5)))
    if name == "none":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0)
    raise ConfigError(f"train.scheduler.name must be step, plateau, poly or none, got {name!r}")
