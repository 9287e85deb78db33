"""Data-parallel training over several processes (``training.processes`` > 1), set up through accelerate.

How a run goes (:func:`train_data_parallel`, called by :func:`training.train.train`):

- The calling process is rank 0. It trains the caller's own model object with the caller's own
  plugins, so the result lands in place exactly as with one process (``stages.finetune_on_slice``,
  ``methods.finetune`` and per-epoch callbacks see rank 0's model, and nothing is copied back).
- It starts ``processes - 1`` worker processes (``spawn``). Each builds a copy of the model from
  its config and weights written to a temporary folder (JSON and safetensors, no pickle; the
  caller's forward/backward hooks, e.g. an attached usage tracker, are not part of it) and the saved
  tokenizer, and gets the facts, the config and every plugin's *replica* (see below) as process
  arguments. Rank r runs on ``cuda:(i + r)`` when the caller's model is on ``cuda:i``, else on the CPU
  with ``threads // processes`` threads each.
- accelerate's ``PartialState`` builds the process group from the environment (gloo on the CPU,
  NCCL on GPUs); it is torn down (and accelerate's state reset) when training ends.
- Every process builds the same global batches in the same order (the same seeded shuffles and
  data mixing) and takes its contiguous share of each. Its loss keeps the global normalisation
  (``per_batch = batch_size``: a fact weighs 1 / batch_size, whichever process holds it), so the sum
  of the processes' gradients is the global batch's gradient. Gradients (and the loss, for the
  epoch's record) are summed with one all-reduce per bucket after backward and the row-wise
  embedding gradient, before clipping; every process then clips and steps on the same numbers, so
  all copies of the model stay equal. A batch with fewer facts than processes leaves some with no
  facts; they contribute zero gradients. Trainable parameters are broadcast from rank 0 after the
  plugins' ``prepare`` (so randomly initialised adapters start equal everywhere).
- ``accelerator.prepare`` (DDP) is not used: the loss calls the model's body and head directly
  (the head only at answer positions) and adds the embedding's gradient row by row after backward;
  both bypass DDP's hooks, so gradients are summed explicitly instead.

Plugins (``TrainingPlugin.replica``): a plugin that changes training (``OnlyParameters``,
``UpdateMask``, ``LoraAdapters``) runs in every process: its replica is a fresh copy, so masks hold
and frozen parameters stay frozen in each copy. ``RecordUsage`` runs in every process on that
process's share of each batch, and its sums are all-reduced in ``finish`` (the per-position output
gradients do not depend on how a batch is split, so the totals equal a one-process run's up to
rounding). Plugins that only look at the model after an epoch (``EpochCallback``,
``StopAtAccuracy``) run in rank 0 only; a stop asked for by any process stops all. A plugin without
an answer makes the run fail before any process starts, naming it.

Dropout: each worker reseeds torch after ``prepare`` (rank 0 keeps the one-process stream), so
dropout masks differ from a one-process run's; with dropout the result equals one process's in
distribution only. Without dropout (or with dropout 0) the weights equal a one-process run's up to
float rounding (tested).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import tempfile
import traceback
from datetime import timedelta
from pathlib import Path
from multiprocessing.reduction import ForkingPickler
from typing import Sequence

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

TIMEOUT = timedelta(minutes=30)  # how long a process waits for the others at a collective
BUCKET = 1 << 25  # elements per gradient all-reduce (128 MB of fp32)

_active: ProcessGroup | None = None  # this process's group while a multi-process run trains


class ProcessGroup:
    """This process's place in a multi-process run: its rank, the world size and its device."""

    def __init__(self, rank: int, world: int, device: torch.device):
        self.rank, self.world, self.device = rank, world, device

    def shard(self, idx: list[int]) -> list[int]:
        """This process's contiguous share of a global batch (sizes differ by at most one)."""
        n = len(idx)
        return idx[self.rank * n // self.world : (self.rank + 1) * n // self.world]

    @torch.no_grad()
    def start(self, params: Sequence[torch.nn.Parameter], seed: int) -> None:
        """Rank 0's trainable values to every process; then a per-process seed for dropout."""
        for p in params:
            dist.broadcast(p.data, src=0)
        if self.rank:
            torch.manual_seed(seed + 1_000_003 * self.rank)

    @torch.no_grad()
    def sum_gradients(self, params: Sequence[torch.nn.Parameter], loss: torch.Tensor) -> torch.Tensor:
        """Sum every parameter's gradient (and the loss) over the processes, in place; returns the
        global batch's loss. A parameter no process has a gradient for keeps None (as with one
        process, where the optimiser then skips it)."""
        head = torch.tensor([float(p.grad is not None) for p in params] + [0.0], dtype=torch.float64,
                            device=self.device)
        head[-1] = loss.detach().to(device=self.device, dtype=torch.float64)
        dist.all_reduce(head)
        present = [p for p, n in zip(params, head[:-1].tolist()) if n > 0]
        for bucket in _buckets(present):
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in bucket])
            dist.all_reduce(flat)
            offset = 0
            for p in bucket:
                g = flat[offset : offset + p.numel()].view_as(p)
                offset += p.numel()
                if p.grad is None:
                    p.grad = g.clone()
                else:
                    p.grad.copy_(g)
        return head[-1].float()

    def any(self, flag: bool) -> bool:
        """Whether any process says True."""
        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t)
        return bool(t.item() > 0)


def _buckets(params: Sequence[torch.nn.Parameter]):
    bucket, size = [], 0
    for p in params:
        if bucket and (size + p.numel() > BUCKET or p.dtype != bucket[0].dtype):
            yield bucket
            bucket, size = [], 0
        bucket.append(p)
        size += p.numel()
    if bucket:
        yield bucket


def sum_across_processes(tensors: Sequence[torch.Tensor]) -> None:
    """Sum each tensor over the processes of the multi-process run training now, in place; nothing
    when none is (one process). For plugins that keep statistics (``RecordUsage``); every process
    must call it with tensors of the same shapes, at the same point."""
    if _active is None or not tensors:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.detach().reshape(-1).to(_active.device) for t in group])
        dist.all_reduce(flat)
        offset = 0
        with torch.no_grad():
            for t in group:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()


# --- sending the run to the workers -------------------------------------------------------------


def save_weights(model, directory: Path) -> None:
    """The model's config and weights as files (JSON and safetensors; no pickle), without its hooks."""
    from safetensors.torch import save_model

    model.config.to_json_file(str(directory / "config.json"))
    save_model(model, str(directory / "model.safetensors"))


def load_weights(model_class, directory: Path, dtype: torch.dtype):
    """A copy of the model saved by :func:`save_weights` (the same class, built from its config)."""
    from safetensors.torch import load_model
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(directory))
    model = model_class(config).to(dtype)
    load_model(model, str(directory / "model.safetensors"))
    return model.eval()


def plugin_replicas(plugins: Sequence, processes: int) -> list:
    """Each plugin's replica for the other processes (None: rank 0 only); fails, naming the plugin,
    when one cannot run in several processes or cannot be sent to them."""
    replicas = []
    for plugin in plugins:
        name = type(plugin).__name__
        try:
            replica = plugin.replica()
        except NotImplementedError:
            raise ValueError(
                f"training plugin {name} cannot run in several processes (training.processes={processes}): it does not "
                f"define replica(); set training.processes to 1 or give {name} a replica()") from None
        if replica is not None:
            try:  # what multiprocessing will do to send it (in memory; nothing is written)
                ForkingPickler.dumps(replica)
            except Exception as exc:  # noqa: BLE001 - any failure to send means the same thing here
                raise ValueError(f"training plugin {name} cannot be sent to the other training processes "
                                 f"(training.processes={processes}): {exc}") from exc
        replicas.append(replica)
    return replicas


def rank_devices(device: torch.device, processes: int) -> list[torch.device]:
    """Rank r's device: the caller's CPU, or the r-th GPU from the caller's."""
    if device.type == "cpu":
        return [device] * processes
    if device.type != "cuda":
        raise ValueError(f"training.processes > 1 runs on the CPU or on CUDA GPUs, not on {device.type}")
    first = device.index if device.index is not None else torch.cuda.current_device()
    available = torch.cuda.device_count()
    if first + processes > available:
        raise ValueError(f"training.processes={processes} needs {processes} GPUs from cuda:{first}, but {available} "
                         f"are visible (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
    return [torch.device("cuda", first + r) for r in range(processes)]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, world: int, device: torch.device) -> ProcessGroup:
    """Join the process group through accelerate (environment set by the launcher)."""
    global _active
    from accelerate import PartialState

    _check_no_group()
    cpu = device.type == "cpu"
    if not cpu:
        torch.cuda.set_device(device)
    env = {"RANK": rank, "LOCAL_RANK": rank}
    if not cpu:
        env["ACCELERATE_TORCH_DEVICE"] = str(device)
    from accelerate.utils import patch_environment

    with patch_environment(**env):
        state = PartialState(cpu=cpu, backend="gloo" if cpu else "nccl", timeout=TIMEOUT)
    if state.num_processes != world or state.process_index != rank:
        raise RuntimeError(f"process group mismatch: expected rank {rank} of {world}, got {state}")
    _active = ProcessGroup(rank, world, device)
    return _active


def _check_no_group() -> None:
    from accelerate import PartialState

    if PartialState._shared_state or dist.is_initialized():
        raise RuntimeError("training.processes > 1 starts its own process group, but this process already has "
                           "one (or a live accelerate state); run it from a plain, single process")


def _leave() -> None:
    global _active
    from accelerate import PartialState

    _active = None
    if dist.is_initialized():
        dist.destroy_process_group()
    PartialState._reset_state()


def _worker(rank: int, world: int, payload_dir: str, model_class, run: dict, device: str, threads: int,
            reports) -> None:
    """A worker process: load the run, say so, join the group, train its shares, leave. Any error
    goes to ``reports`` (with its traceback) before the process ends."""
    try:
        from workflow_scripts.training.train import _train

        torch.set_num_threads(threads)
        device = torch.device(device)
        from transformers import AutoTokenizer

        model = load_weights(model_class, Path(payload_dir), run["dtype"]).to(device)
        tokenizer = AutoTokenizer.from_pretrained(str(Path(payload_dir) / "tokenizer"))
        reports.put((rank, None))
        _join(rank, world, device)
        try:
            _train(model, tokenizer, run["prompts"], run["targets"], run["cfg"],
                   [r for r in run["replicas"] if r is not None], group=_active)
        finally:
            _leave()
    except BaseException:
        reports.put((rank, traceback.format_exc()))
        raise


def _await_ready(workers, reports) -> None:
    """Wait until every worker has loaded the run (so one that fails there never leaves rank 0
    waiting for it to join); raises with its traceback otherwise."""
    waiting = {r + 1 for r in range(len(workers))}
    while waiting:
        try:
            rank, error = reports.get(timeout=1.0)
        except queue.Empty:
            dead = [w.name for w in workers if w.exitcode is not None]
            if dead:
                raise RuntimeError(f"training process(es) {dead} ended before joining") from None
            continue
        if error is not None:
            raise RuntimeError(f"training process {rank} failed:\n{error}")
        waiting.discard(rank)


def _first_error(reports) -> str | None:
    with contextlib.suppress(Exception):
        while True:
            rank, error = reports.get(timeout=0.5)
            if error is not None:
                return f"training process {rank} failed:\n{error}"
    return None


def train_data_parallel(model, tokenizer, prompts, targets, cfg, plugins: Sequence = ()) -> list[dict]:
    """:func:`training.train.train` over ``cfg.processes`` processes; the caller's process is rank 0
    and trains ``model`` in place. Returns rank 0's history (losses of the global batches)."""
    import multiprocessing

    from accelerate.utils import patch_environment

    from workflow_scripts.training.train import _train, autocast_for

    world = cfg.processes
    device = next(model.parameters()).device
    autocast_for(cfg, device)  # fails before any process starts if the device lacks bf16
    replicas = plugin_replicas(plugins, world)
    devices = rank_devices(device, world)
    _check_no_group()
    threads_before = torch.get_num_threads()
    threads = max(1, threads_before // world)
    ctx = multiprocessing.get_context("spawn")
    reports = ctx.Queue()
    workers = []
    with tempfile.TemporaryDirectory(prefix="stubborn_ddp_") as tmp:
        save_weights(model, Path(tmp))
        tokenizer.save_pretrained(str(Path(tmp) / "tokenizer"))
        run = {"prompts": list(prompts), "targets": list(targets), "cfg": cfg, "replicas": replicas,
               "dtype": next(model.parameters()).dtype}
        env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": _free_port(), "WORLD_SIZE": world,
               "LOCAL_WORLD_SIZE": world, "OMP_NUM_THREADS": threads}
        with patch_environment(**env):
            try:
                for rank in range(1, world):
                    w = ctx.Process(target=_worker, name=f"train-rank{rank}", daemon=True,
                                    args=(rank, world, tmp, type(model), run, str(devices[rank]), threads, reports))
                    w.start()
                    workers.append(w)
                _await_ready(workers, reports)
                try:
                    group = _join(0, world, devices[0])
                    torch.set_num_threads(threads)
                    history = _train(model, tokenizer, prompts, targets, cfg, plugins, group=group)
                finally:
                    torch.set_num_threads(threads_before)
                    _leave()
                for w in workers:
                    w.join()
            except BaseException as exc:
                _stop(workers)
                error = _first_error(reports)
                if error and hasattr(exc, "add_note"):  # a worker's own error (or its view of rank 0's)
                    exc.add_note(error)
                raise
        failed = {w.name: w.exitcode for w in workers if w.exitcode != 0}
        if failed:
            raise RuntimeError(f"training process(es) failed after training: {failed}; {_first_error(reports)}")
    log.info("trained in %d processes on %s", world, ", ".join(str(d) for d in devices))
    return history


def _stop(workers) -> None:
    """End our own worker processes (after a failure; they may wait at a collective)."""
    for w in workers:
        w.join(timeout=5 if w.exitcode is None else 0)
        if w.is_alive():
            w.terminate()
            w.join(timeout=10)
        if w.is_alive():
            with contextlib.suppress(Exception):
                w.kill()
                w.join(timeout=10)
