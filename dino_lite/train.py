"""Training: one loop for every method (:mod:`dino_lite.methods` holds the methods' steps).

Read it top to bottom as the reference's ``main_dino``: :func:`resolve_run` fixes the config a
run trains with (the precision measured on this machine, the fp32 variant, a resumed run's own);
:class:`Trainer` builds the data, the method's networks, the optimiser and the schedules from it
and runs the loop (log, checkpoints, exact resume, Ctrl-C, torchrun, the collapse warning). The
``--minutes`` time budget is measured in :mod:`dino_lite.budget`.
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from . import budget
from .augment import MultiCrop
from .checkpoint import clean_temp_files, load_training_checkpoint, save_checkpoint
from .collapse import CollapseWatch
from .config import Config
from .data import EpochSampler, SeededViews, build_dataset, collate_views, describe_folder
from .data import subset_indices  # noqa: F401 (importers)
from .methods import build_networks, get_method
from .precision import Precision, for_config
from .rundir import RunLock, open_log, read_records, sync
from .schedules import cosine_schedule
from .step import NonFiniteLossError, Process, micro_batches  # noqa: F401 (importers)
from .threads import AdaptiveThreads

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"
# options a resumed run may take from the command line instead of the checkpoint: they change
# neither the model nor the data nor the randomness
SAFE_ON_RESUME = ("num_workers", "compile", "threads", "name", "notes")
# the run's length: a resumed run may be given another one (to extend a finished run); the
# schedules are then laid out again over the new length from the step reached
LENGTH_KEYS = ("epochs", "max_steps")


class Terminated(KeyboardInterrupt):
    """The run got SIGTERM (``kill``, a scheduler, torchrun stopping its workers) and stopped as
    on Ctrl-C, its checkpoint saved; the command line then exits with 143 (128 + 15)."""


def distributed_setup():
    """(rank, world_size, device) from torchrun's environment; NCCL on GPUs, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return rank, world, device


def resume_config(saved: Config, given: Config | None) -> Config:
    """The config a resumed run continues with: the checkpoint's, where ``given`` (the command
    line's; None: unchanged) may change only :data:`SAFE_ON_RESUME` and the length
    (:data:`LENGTH_KEYS`; ``minutes`` can only be replaced by a length). Any other difference is
    refused: a run resumed with other settings is neither the old run nor a new one."""
    if given is None:
        return saved
    old, new = saved.to_dict(), Config.from_dict(given.to_dict()).to_dict()
    changed = [k for k in old if old[k] != new[k] and k not in SAFE_ON_RESUME + LENGTH_KEYS]
    if changed == ["minutes"] and new["minutes"] is None:
        changed = []           # --epochs / --max-steps given: a length replaces the time budget
    if changed:
        diffs = ", ".join(f"{k} (checkpoint {old[k]!r}, now {new[k]!r})" for k in changed)
        raise ValueError(f"--resume with options that differ from the checkpoint's: {diffs}. "
                         f"Resume with the run's own options (see its config.json); only "
                         f"{', '.join(LENGTH_KEYS + SAFE_ON_RESUME[:3])} may change, to extend "
                         f"a run use --max-steps or --epochs, or start a new run in another --out")
    return Config.from_dict(new)


def resolve_run(cfg: Config, out: Path, resume, overwrite: bool, device: torch.device,
                say=print):
    """``(cfg, precision, checkpoint)``: the config the run trains with, complete, and the
    checkpoint it continues (None for a new run). ``resume=True`` continues the folder's
    checkpoint (an error without one) with its config (:func:`resume_config`) and precision, so
    it continues identically; ``resume="auto"`` resumes when one exists. A new run measures its
    precision on this machine (:mod:`dino_lite.precision`) and, computing in fp32 on a CPU,
    takes the preset's cheaper ``fp32_variant``; into a folder holding a checkpoint it is
    refused unless ``overwrite``."""
    ckpt, path = None, out / CHECKPOINT
    if resume == "auto":            # notebooks: continue a run that exists, else start one
        resume = path.exists()
    if resume:
        if not path.exists():
            raise FileNotFoundError(f"--resume: there is no checkpoint {path} to continue from; "
                                    f"leave out --resume to start a new run")
        ckpt = load_training_checkpoint(path)
        if "precision" in ckpt:     # the saved config has the fp32 variant applied, if it was
            cfg = cfg.for_precision(ckpt["precision"]["bf16"], device.type)
        cfg = resume_config(Config.from_dict(ckpt["config"]).validate(), cfg)
    elif path.exists() and not overwrite:
        raise FileExistsError(f"{out} already holds a training run ({CHECKPOINT}); continue it "
                              f"with --resume, or start a new run in another --out")
    cfg = cfg.validate()
    precision = (Precision.from_dict(ckpt["precision"]) if ckpt is not None and "precision" in ckpt
                 else for_config(cfg, device.type))
    say(str(precision))
    as_run = cfg.for_precision(precision.bf16, device.type)
    if as_run != cfg:
        cfg = as_run.validate()
        say("fp32 on this CPU: the preset's cheaper fp32 variant applies: " +
            ", ".join(f"{k}={v}" for k, v in cfg.fp32_variant.items()))
    return cfg, precision, ckpt


def param_groups(model):
    """AdamW groups: weight decay on weight matrices only, none on biases and norm parameters."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0, "no_decay": True}]


def build_optimizer(cfg: Config, model):
    """AdamW (the ViT recipe; betas ``cfg.adam_betas``) or SGD with momentum 0.9; lr and weight
    decay are set every step."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(param_groups(model), lr=0.0, momentum=0.9)
    return torch.optim.AdamW(param_groups(model), betas=tuple(cfg.adam_betas))


def make_schedules(cfg: Config, total_steps: int, global_batch: int,
                   steps_per_epoch: int | None = None) -> dict:
    """Per-step arrays: lr and weight decay, and the method's own (DINO: the teacher momentum,
    the steps the last layer stays frozen, the teacher temperature's warm-up). Warm-ups are
    given in epochs of the full recipe; a shorter run (time budget or --max-steps) compresses the
    whole recipe, warm-ups included, into its steps."""
    def steps(epochs):
        return int(round(epochs / cfg.epochs * total_steps))
    return {
        "lr": cosine_schedule(cfg.lr * global_batch / 256, cfg.min_lr, total_steps,
                              steps(cfg.warmup_epochs)),
        "wd": cosine_schedule(cfg.weight_decay, cfg.weight_decay_end, total_steps),
        **get_method(cfg.method).schedules(cfg, total_steps, steps, steps_per_epoch),
    }


# -- the loop ---------------------------------------------------------------------------------

class Trainer:
    """Everything one run needs; ``run()`` trains until the step budget is spent. It knows no
    method: ``cfg.method`` (:mod:`dino_lite.methods`) gives the networks, the loss state and
    the step."""

    clock = staticmethod(time.perf_counter)      # seconds; the time budget's clock
    cpu_clock = staticmethod(time.process_time)  # this process's CPU seconds, all its threads

    def __init__(self, cfg: Config, out_dir, resume=False, progress=True, on_step=None,
                 overwrite=False):
        self.started, self.cpu_started = self.clock(), self.cpu_clock()
        # the wall and CPU seconds of the processes that trained this run before this one (the
        # checkpoint keeps them, so a resumed run's cost is the sum of its parts): spent()
        self.spent_before = {"wall_s": 0.0, "cpu_s": 0.0}
        # torch's thread count: cfg.threads, or fitted to the other processes' load, measured
        # from now on (dino_lite.threads)
        self.threads = AdaptiveThreads()
        self.rank, self.world, self.device = distributed_setup()
        self.out = Path(out_dir)
        self.progress, self.on_step = progress and self.rank == 0, on_step
        if self.out.exists() and not self.out.is_dir():
            raise NotADirectoryError(f"the run folder {self.out} is an existing file; pass a folder")
        if self.rank == 0:
            RunLock(self.out).check()       # refuse early when another run trains into out_dir
        cfg, self.precision, ckpt = resolve_run(cfg, self.out, resume, overwrite, self.device,
                                                say=self._say if progress else lambda line: None)
        self.cfg, self.method = cfg, get_method(cfg.method)
        self.proc = Process(self.rank, self.world, self.device, self.precision)
        torch.manual_seed(cfg.seed)
        images = self._data()
        self._networks(images)
        self.optimizer = build_optimizer(cfg, self.student)
        self._say(self.threads.start(cfg.threads), sys.stderr)
        self.total_steps = self._length(ckpt)
        self.sched, self.loss_fn = self.lay_out(self.total_steps)
        self.step = 0
        # --minutes: the run re-measures its pace once, on its own steps (budget.refit_step)
        self.refit_at = (budget.refit_step(self.steps_per_epoch, self.total_steps)
                         if cfg.minutes and ckpt is None else None)
        if ckpt is not None:
            self._restore(ckpt)
        self._log = None
        self._stop = None

    def _data(self):
        """The training images (a seeded share of them with ``data_fraction < 1``), their seeded
        multi-crop views, the sampler and the loader; returns the images."""
        cfg = self.cfg
        images = build_dataset(cfg.data, train=True, image_size=cfg.image_size)
        if self.progress:               # a folder: what was found, labelled or not
            self._say(describe_folder(cfg.data, images))
        if cfg.data_fraction < 1:       # a seeded subset of the images (the small-data study)
            images = torch.utils.data.Subset(
                images, subset_indices(len(images), cfg.data_fraction, cfg.seed))
        crops = MultiCrop(cfg.global_size, cfg.local_size, cfg.n_local, cfg.global_scale,
                          cfg.local_scale)
        self.dataset = SeededViews(images, crops, cfg.seed)
        self.sampler = EpochSampler(len(images), cfg.batch_size, cfg.seed, self.rank, self.world)
        self.steps_per_epoch = self.sampler.batches_per_epoch
        if self.sampler.local_batch % cfg.accumulate:
            raise ValueError(f"each of the {self.world} processes' {self.sampler.local_batch} "
                             f"images does not split into accumulate={cfg.accumulate} equal "
                             f"micro-batches; pick a batch_size divisible by processes x accumulate")
        self.loader = torch.utils.data.DataLoader(
            self.dataset, self.sampler.local_batch, sampler=self.sampler, num_workers=cfg.num_workers,
            collate_fn=collate_views, pin_memory=self.device.type == "cuda",
            generator=torch.Generator())     # not the global RNG: resume stays exact
        return images

    def _networks(self, images):
        """The method's student and teacher on this device, and the student's forward pass:
        with several processes through DDP, which averages the gradients over them; the student
        itself holds the weights (checkpoints, EMA, clipping)."""
        cfg = self.cfg
        student, teacher = build_networks(cfg, self.precision.fused_attention, images)
        if self.world > 1 and self.device.type == "cuda":   # BatchNorm over the global batch
            student = torch.nn.SyncBatchNorm.convert_sync_batchnorm(student)
            teacher = torch.nn.SyncBatchNorm.convert_sync_batchnorm(teacher)
        elif self.world > 1 and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                                    for m in student.modules()):
            self._say("note: on CPU each process's BatchNorm normalises over its own share of the "
                      "batch (torch's SyncBatchNorm needs a GPU), so this run follows a 1-process run "
                      "closely but not exactly; see docs/robustness.md", sys.stderr)
        for net in (student, teacher):
            net.to(self.device)
            if self.device.type == "cuda" and cfg.arch.startswith("resnet"):   # faster convolutions
                net.to(memory_format=torch.channels_last)
            if cfg.compile:                 # in place, so state_dict keys keep their names
                net.backbone.compile()
        self.student, self.teacher = student, teacher
        self.student_forward = student
        if self.world > 1:
            self.student_forward = torch.nn.parallel.DistributedDataParallel(
                student, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _length(self, ckpt) -> int:
        """The run's total steps: its epochs or --max-steps (``step_cap``), what fits in
        --minutes, or a resumed run's (laid out again over a new length when one is given)."""
        cfg = self.cfg
        self.step_cap = min(cfg.epochs * self.steps_per_epoch, cfg.max_steps or math.inf)
        if ckpt is None:
            return self._probe_budget() if cfg.minutes else self.step_cap
        saved = Config.from_dict(ckpt["config"])
        if all(getattr(saved, k) == getattr(cfg, k) for k in LENGTH_KEYS + ("minutes",)):
            return ckpt["total_steps"]
        if self.step_cap < ckpt["step"]:     # a new length: lay the rest out over it
            raise ValueError(f"--resume: the run is at step {ckpt['step']}, past the "
                             f"{self.step_cap} steps of the new length")
        self._say(f"resuming at step {ckpt['step']}: the schedules are laid out again "
                  f"over {self.step_cap} steps (were {ckpt['total_steps']})")
        return self.step_cap

    def _restore(self, ckpt):
        self.student.load_state_dict(ckpt["student"])
        self.teacher.load_state_dict(ckpt["teacher"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.loss_fn.load_state_dict(ckpt["loss"])
        self.step = ckpt["step"]
        self.spent_before = {k: float(v) for k, v in ckpt.get("spent", self.spent_before).items()}
        torch.set_rng_state(ckpt["rng"])
        if "cuda_rng" in ckpt and self.device.type == "cuda":
            torch.cuda.set_rng_state(ckpt["cuda_rng"], self.device)

    def encoder(self):
        """The trained backbone evaluation uses (:meth:`dino_lite.methods.base.Method.encoder`)."""
        return self.method.encoder(self.student, self.teacher)

    def lay_out(self, total_steps: int):
        """The per-step schedules and the method's loss state over ``total_steps``; returns
        ``(sched, loss_fn)``."""
        sched = make_schedules(self.cfg, total_steps, self.cfg.batch_size, self.steps_per_epoch)
        return sched, self.method.loss_state(self.cfg, total_steps, sched).to(self.device)

    def train_step(self, views, step, student, teacher, loss_fn, optimizer, sched=None,
                   student_forward=None) -> dict:
        """One step of the run's method on ``views`` with the given networks; ``sched``
        defaults to the run's schedules."""
        sched = self.sched if sched is None else sched
        return self.method.step(views, step, student, teacher, loss_fn, optimizer, sched,
                                self.cfg, self.proc, student_forward)

    # -- the --minutes time budget (dino_lite.budget) ---------------------------------------
    def _probe_budget(self) -> int:
        """The steps that fit in the budget, from a few throw-away steps on copies of the
        networks (their own optimiser, schedules and loss; the run's state is not touched)."""
        student, teacher = copy.deepcopy(self.student), copy.deepcopy(self.teacher)
        optimizer = build_optimizer(self.cfg, student)
        sched, loss_fn = self.lay_out(sum(budget.PROBE_STEPS))
        self.sampler.set_epoch(0)
        per_step = budget.probe(
            lambda i, views: self.train_step(views, i, student, teacher, loss_fn, optimizer, sched),
            iter(self.loader), self.clock)
        return self._fit_budget(0, per_step, f"{per_step * 1000:.0f} ms/step (probe)")

    def _fit_budget(self, done: int, per_step: float, how: str) -> int:
        """``done`` steps plus those of ``per_step`` seconds that fit in the rest of the budget
        (counted from the trainer's creation), the same on every rank."""
        steps = budget.agree(budget.steps_that_fit(self.cfg.minutes, self.clock() - self.started,
                                                   per_step, done, self.step_cap), self.device)
        self._say(f"time budget {self.cfg.minutes:g} min: {how} -> {steps} steps")
        return steps

    def _refit_budget(self, run_start: float):
        """Fit the budget again from the pace of the run's own steps so far and lay the
        schedules out over the new count; the loss state carries over."""
        per_step = (self.clock() - run_start) / self.step
        self.total_steps = self._fit_budget(
            self.step, per_step, f"{per_step * 1000:.0f} ms/step over the first {self.step} steps")
        state = self.loss_fn.state_dict()
        self.sched, self.loss_fn = self.lay_out(self.total_steps)
        self.loss_fn.load_state_dict(state)

    # -- the run --------------------------------------------------------------------------
    def _say(self, line: str | None, file=None):
        """Print ``line`` on rank 0 (to ``file``, default stdout); nothing for None."""
        if line and self.rank == 0:
            print(line, file=file)

    def spent(self) -> dict:
        """Wall and CPU seconds this run has cost so far, over every process that trained it
        (this one since it was built, rank 0's CPU). A checkpoint from before this count was
        kept holds none: its earlier parts count as 0. Time after the last checkpoint of a
        process that was killed is not counted (its steps are trained again)."""
        return {"wall_s": self.spent_before["wall_s"] + self.clock() - self.started,
                "cpu_s": self.spent_before["cpu_s"] + self.cpu_clock() - self.cpu_started}

    def state(self) -> dict:
        return {"student": self.student.state_dict(), "teacher": self.teacher.state_dict(),
                "optimizer": self.optimizer.state_dict(), "loss": self.loss_fn.state_dict(),
                "step": self.step, "total_steps": self.total_steps, "config": self.cfg.to_dict(),
                "spent": self.spent(),
                "precision": self.precision.to_dict(), "rng": torch.get_rng_state(),
                **({"cuda_rng": torch.cuda.get_rng_state(self.device)}
                   if self.device.type == "cuda" else {})}

    def save(self):
        """Write the checkpoint (rank 0), after the log lines of the steps it holds are on disk."""
        if self.rank == 0:
            if self._log is not None:
                sync(self._log)
            save_checkpoint(self.state(), self.out / CHECKPOINT)

    def _on_signal(self, signum, frame):
        """Ctrl-C (SIGINT) or SIGTERM: finish the step under way, then save and stop (see run());
        a second one stops at once, keeping the last checkpoint."""
        if self._stop:
            raise Terminated if self._stop == signal.SIGTERM else KeyboardInterrupt
        self._stop = signum
        name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
        self._say(f"\n{name}: stopping after this step (again to stop now, without saving)", sys.stderr)

    def _stop_requested(self):
        """The stop signal any process got (SIGTERM before SIGINT), else None; all processes
        agree, so they stop at the same step."""
        stop = int(self._stop or 0)
        if self.world > 1:
            flag = torch.tensor([float(stop)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = int(flag.item())
        return stop or None

    def _stopped(self, stop: KeyboardInterrupt, mid_step: bool):
        """Save the checkpoint of the step boundary the run stopped at and say so; a second
        Ctrl-C inside a step keeps the last checkpoint instead (its half-made state is not saved)."""
        how = "terminated (SIGTERM)" if isinstance(stop, Terminated) else "interrupted"
        if mid_step:
            self._say(f"{how} during step {self.step}; the last checkpoint {self.out / CHECKPOINT} "
                      f"is kept, continue with --resume", sys.stderr)
        else:
            self.save()
            self._say(f"{how} at step {self.step}; checkpoint saved, continue with --resume", sys.stderr)

    def run(self, until: int | None = None) -> list[dict]:
        """Train to ``total_steps``, or pause after step ``until`` of the same schedule (the
        checkpoint is saved there, and a resumed run continues as if never paused); returns the
        per-step records (also in ``log.jsonl``). The run folder is locked meanwhile
        (:class:`~dino_lite.rundir.RunLock`). Ctrl-C or SIGTERM (:meth:`_on_signal`) saves the
        step boundary reached, so a resumed run continues as an uninterrupted one would, and
        raises KeyboardInterrupt (:class:`Terminated` for SIGTERM)."""
        self.out.mkdir(parents=True, exist_ok=True)
        lock = RunLock(self.out) if self.rank == 0 else None
        if lock is not None:
            self._say(lock.acquire(), sys.stderr)
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        self._stop = None
        try:
            if lock is not None:
                clean_temp_files(self.out / CHECKPOINT)   # left by writes that were killed
                # the config as run (bf16 "auto" included) and what "auto" resolved to here
                (self.out / "config.json").write_text(json.dumps(
                    {**self.cfg.to_dict(), "resolved_precision": self.precision.to_dict()}, indent=2))
            return self._run(until)
        finally:
            self.threads.close()
            for s, handler in handlers.items():
                signal.signal(s, handler)
            if lock is not None:
                lock.release()

    def _run(self, until: int | None) -> list[dict]:
        # the log holds exactly the records of the steps before self.step (all the checkpoint's
        # on resume; none on a fresh run), open for appending line by line
        log = self._log = open_log(self.out / LOG, self.step) if self.rank == 0 else None
        # one warning if the teacher collapses (dino_lite.collapse), judged over this run's
        # records: a resumed run's earlier ones too
        watch = CollapseWatch(self.cfg, read_records(self.out / LOG) if log and self.step else ())
        history = []
        pause_at = math.inf if until is None else until
        end = min(pause_at, self.total_steps)       # the last step of this call
        bar = tqdm(total=end, initial=min(self.step, end), desc=self.cfg.method, disable=not self.progress,
                   dynamic_ncols=True)
        self.student.train()
        self.teacher.train()
        start = self.clock()
        mid_step = False      # True while the state is between two steps' (not to be saved)
        try:
            if self.step >= self.total_steps:
                self._say(f"the run in {self.out} is complete ({self.step} steps); to extend it, "
                          f"resume with a larger --max-steps or --epochs")
            while self.step < end:
                epoch, start_batch = divmod(self.step, self.steps_per_epoch)
                self.sampler.set_epoch(epoch, start_batch)
                self.dataset.epoch = epoch
                for views, _ in self.loader:
                    mid_step = True
                    rec = self.train_step(views, self.step, self.student, self.teacher,
                                          self.loss_fn, self.optimizer, self.sched,
                                          student_forward=self.student_forward)
                    rec["epoch"] = epoch
                    rec["threads"] = torch.get_num_threads()       # the step ran on these
                    rec["time"] = round(self.clock() - start, 3)   # s since (re)start
                    alarm = watch.check(rec, self.total_steps) if self.rank == 0 else None
                    if alarm:
                        rec["collapse"] = alarm
                        tqdm.write(alarm["message"], file=sys.stderr)
                    self.step += 1
                    history.append(rec)
                    if log:
                        log.write(json.dumps(rec) + "\n")
                    mid_step = False
                    self._say(self.threads.check(), sys.stderr)   # another process took or left a core?
                    bar.update(1)
                    bar.set_postfix(loss=f"{rec['loss']:.3f}", refresh=False,
                                    **({"H_t": f"{rec['teacher_entropy']:.2f}"} if "teacher_entropy" in rec else {}))
                    if self.on_step:
                        self.on_step(rec)
                    if self.step == self.refit_at:
                        self._refit_budget(start)
                        end = bar.total = min(pause_at, self.total_steps)
                    if self.step % self.steps_per_epoch == 0 or self.step in (end, self.total_steps):
                        self.save()
                    stop = self._stop_requested()
                    if stop:
                        raise Terminated if stop == signal.SIGTERM else KeyboardInterrupt
                    if self.step >= end:
                        break
        except NonFiniteLossError as e:
            raise NonFiniteLossError(f"{e}. The last good checkpoint is kept at "
                                     f"{self.out / CHECKPOINT} (if one was written); try a lower "
                                     f"lr.") from None
        except KeyboardInterrupt as stop:
            bar.close()
            self._stopped(stop, mid_step)
            raise
        finally:
            bar.close()
            if log:
                log.close()
            self._log = None
        return history


DINOTrainer = Trainer     # the same class, by the name older code imports


def train(cfg: Config, out_dir, resume=False, progress=True, on_step=None, overwrite=False,
          until=None):
    """Train with ``cfg`` into ``out_dir``; returns the trainer (its history is in the log).
    ``until`` pauses the run after that step of its schedule (see :meth:`Trainer.run`);
    ``resume`` and ``overwrite`` as in :func:`resolve_run`."""
    trainer = Trainer(cfg, out_dir, resume=resume, progress=progress, on_step=on_step,
                      overwrite=overwrite)
    trainer.history = trainer.run(until)
    return trainer


def read_log(out_dir) -> list[dict]:
    """The per-step records of a run directory."""
    return read_records(Path(out_dir) / LOG)
