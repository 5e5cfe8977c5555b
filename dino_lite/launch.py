"""Scale-out launcher: the same ``python -m dino_lite train`` as a torchrun or SLURM job.

:func:`launch` resolves a preset plus overrides, builds the exact command and either prints it
(``run=False``, the default) or runs it: ``torchrun`` on this machine (single node, several
GPUs, or several CPU processes with gloo), or a SLURM job through submitit
(``backend="slurm"``) that requeues itself on preemption and resumes from the last checkpoint.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import Config, train_config
from .threads import available_cpus


@dataclass
class LaunchPlan:
    """What :func:`launch` resolved: the command line, the config every rank will run, and where."""
    command: list[str]
    config: Config
    out: Path
    processes: int
    backend: str

    def __str__(self):
        return shlex.join(self.command)


def _train_args(preset, sets, data, out, epochs, max_steps, resume):
    args = ["train", "--preset", preset, "--out", str(out)]
    args += ["--data", data] if data else []
    args += ["--epochs", str(epochs)] if epochs is not None else []
    args += ["--max-steps", str(max_steps)] if max_steps is not None else []
    args += [a for s in sets for a in ("--set", s)]
    return args + (["--resume"] if resume else [])


def launch(preset: str = "imagenet-vits16", sets=(), *, gpus: int = 1, nodes: int = 1,
           data: str | None = None, out=None, epochs: int | None = None,
           max_steps: int | None = None, backend: str = "torchrun", run: bool = False,
           resume: bool = False, slurm: dict | None = None, master: str = "MASTER_HOST"):
    """Build (and with ``run=True`` start) a training run of ``preset`` on ``nodes`` x ``gpus``.

    ``gpus`` is the number of processes per node (GPUs; on a CPU machine, gloo processes).
    ``slurm`` holds extra submitit parameters (``slurm_partition``, ``timeout_min``, ...);
    ``master`` is the first node's address in a multi-node torchrun command.
    Returns the :class:`LaunchPlan`; for a SLURM run that was submitted, the submitit job.
    """
    if backend not in ("torchrun", "slurm"):
        raise ValueError(f"backend must be 'torchrun' or 'slurm', got {backend!r}")
    if gpus < 1 or nodes < 1:
        raise ValueError(f"need at least one node and one process per node, got {nodes} x {gpus}")
    cfg = train_config(preset, sets, data=data, epochs=epochs, max_steps=max_steps)
    world = gpus * nodes
    if cfg.batch_size % world:
        raise ValueError(f"global batch {cfg.batch_size} does not split over {world} processes; "
                         f"pass a batch_size=... override")
    out = Path(out or f"runs/{preset}")
    train_args = _train_args(preset, sets, data, out, epochs, max_steps, resume)
    if backend == "torchrun":
        rdzv = (["--standalone"] if nodes == 1 else
                [f"--nnodes={nodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={master}:29500"])
        command = ["torchrun", *rdzv, f"--nproc_per_node={gpus}", "-m", "dino_lite", *train_args]
    else:
        command = ["python", "-m", "dino_lite", *train_args]      # what each SLURM task runs
    plan = LaunchPlan(command, cfg, out, world, backend)
    if not run:
        return plan
    if backend == "torchrun":
        if nodes > 1:
            raise ValueError("run=True starts a single-node torchrun here; for several nodes run "
                             "the printed command on every node, or use backend='slurm'")
        exe = Path(sys.executable).with_name("torchrun")
        env = dict(os.environ)
        if not torch.cuda.is_available():
            # CPU processes share this machine's cores: each gets its share of threads, or they
            # would all spin on every core (an OMP_NUM_THREADS inherited from the shell is
            # meant for one process)
            env["OMP_NUM_THREADS"] = str(max(1, len(available_cpus()) // gpus))
        subprocess.run([str(exe) if exe.exists() else "torchrun", *command[1:]], check=True, env=env)
        return plan
    return submit_slurm(train_args, out, nodes, gpus, slurm or {})


class SlurmTrain:
    """A submitit job: one ``dino_lite train`` process per task, resumed after preemption."""

    def __init__(self, train_args: list[str]):
        self.train_args = list(train_args)

    def __call__(self):
        import submitit
        env = submitit.JobEnvironment()
        os.environ.update(RANK=str(env.global_rank), WORLD_SIZE=str(env.num_tasks),
                          LOCAL_RANK=str(env.local_rank),
                          MASTER_ADDR=env.hostnames[0], MASTER_PORT=os.environ.get("MASTER_PORT", "29500"))
        from .cli import main
        args = list(self.train_args)
        out = Path(args[args.index("--out") + 1]) if "--out" in args else None
        if "--resume" in args and out is not None and not (out / "checkpoint.pt").exists():
            args.remove("--resume")        # preempted before the first checkpoint: start again
        main(args)

    def checkpoint(self):
        """Called by submitit on preemption/timeout: requeue the same run with ``--resume``."""
        import submitit
        args = self.train_args if "--resume" in self.train_args else self.train_args + ["--resume"]
        return submitit.helpers.DelayedSubmission(SlurmTrain(args))


def submit_slurm(train_args, out, nodes, gpus, params: dict):
    """Submit :class:`SlurmTrain` with submitit (``pip install submitit``); returns the job."""
    try:
        import submitit
    except ImportError as e:
        raise RuntimeError("SLURM launches need submitit: pip install 'dino_lite[slurm]'") from e
    params = dict(params)
    executor = submitit.AutoExecutor(folder=Path(out) / "slurm", cluster=params.pop("cluster", None))
    executor.update_parameters(**{"nodes": nodes, "tasks_per_node": gpus, "gpus_per_node": gpus,
                                  "cpus_per_task": 10, "timeout_min": 60 * 72,
                                  "name": "dino_lite", **params})
    return executor.submit(SlurmTrain(train_args))
