"""Adaptive threads: train on the cores that other processes leave free.

torch runs each operation on a pool of OpenMP threads, by default one per core. The threads meet
at the end of every parallel region, so a region lasts as long as its slowest thread. When
another process keeps a core busy, the thread that shares that core gets only part of it and
every region waits for it (and threads that spin while they wait take CPU from the other process
too): beside one single-threaded busy process a 2-thread step on 2 cores kept 28-40% of its idle
speed, while a 1-thread step hardly notices the other process (docs/robustness.md, "A busy CPU").

:class:`AdaptiveThreads` measures how many cores the *other* processes used since its last check,
on the CPUs this process may run on, and gives torch the rest: ``cores - round(others)``
threads, at least 1 and at most the count torch started with. When the load stops, the full
count comes back at the next check. The measurement is two reads of /proc per check (Linux):

* ``/proc/stat``: per CPU, the jiffies (1/100 s) spent running anything (user, nice, system,
  irq, softirq) and in total;
* ``/proc/self/stat``: the jiffies this process used (all its threads), plus those of its
  children (data-loader workers): the live ones (``/proc/self/task/*/children``) and those
  already ended (``cutime``, ``cstime``).

others = (busy jiffies - own jiffies) / (total jiffies / CPUs), in cores. A core counts as taken
from half of it used: while this process runs on every core, a busy single-threaded process gets
only its fair share (two thirds of a core beside 2 threads on 2 cores), so a higher threshold
could miss it.

Where /proc does not exist (macOS, Windows) nothing changes, and an explicit choice is never
overridden: ``OMP_NUM_THREADS`` set in the environment, or ``threads`` a number in the config.
Runs at different thread counts may differ in the last bits of their floating-point sums; set a
count for runs that must repeat bit for bit on a machine whose load changes.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

PROC = Path("/proc")
CHECK_EVERY = 10.0      # seconds between two checks: the window the load is measured over
MIN_WINDOW = 0.5        # seconds: the shortest window the first check decides on


@dataclass(frozen=True)
class CpuSample:
    """Cumulative CPU times in jiffies, as /proc reports them."""
    busy: int       # the CPUs' time running any process (user, nice, system, irq, softirq)
    total: int      # the CPUs' time in all (idle and iowait included)
    own: int        # this process's time and its children's (live and ended)


def parse_stat(text: str, cpus) -> tuple[int, int]:
    """(busy, total) jiffies of the CPUs numbered ``cpus`` from the text of /proc/stat. Fields
    of a ``cpuN`` line: user nice system idle iowait irq softirq steal guest guest_nice; guest
    time is already part of user, and steal (time the hypervisor gave to another machine) is
    left out of both."""
    busy = total = 0
    for line in text.splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            user, nice, system, idle, iowait, irq, softirq = (int(x) for x in fields[:7])
            busy += user + nice + system + irq + softirq
            total += user + nice + system + idle + iowait + irq + softirq
    return busy, total


def parse_process_times(text: str, ended_children: bool = True) -> int:
    """utime + stime (+ cutime + cstime: its ended children's) in jiffies, from the text of
    /proc/PID/stat. The command name (field 2) is in parentheses and may hold spaces, so the
    fields are counted from the last ')': field 3 (state) is the first after it."""
    fields = text[text.rindex(")") + 2:].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])    # fields 14-17
    return utime + stime + (cutime + cstime if ended_children else 0)


def sample(proc: Path = PROC, cpus=None) -> CpuSample | None:
    """The CPU times now, on ``cpus`` (default: those this process may run on); None where
    /proc cannot be read."""
    cpus = available_cpus() if cpus is None else cpus
    try:
        busy, total = parse_stat((proc / "stat").read_text(), cpus)
        own = parse_process_times((proc / "self" / "stat").read_text())
    except (OSError, ValueError, IndexError):
        return None
    for children in (proc / "self" / "task").glob("*/children"):    # the live children
        for pid in _read(children).split():
            own += _child_times(proc / pid / "stat")
    return CpuSample(busy, total, own) if total else None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:         # a thread or child that ended since the folder was listed
        return ""


def _child_times(path: Path) -> int:
    text = _read(path)
    return parse_process_times(text, ended_children=False) if text else 0


def available_cpus() -> set[int]:
    """The CPUs this process may run on (all of them where the OS cannot say)."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def others_cores(before: CpuSample, after: CpuSample, cores: int) -> float:
    """Cores the other processes used on average between two samples of ``cores`` CPUs."""
    elapsed = (after.total - before.total) / cores        # jiffies of one CPU: the window
    if elapsed <= 0:
        return 0.0
    return max(0.0, (after.busy - before.busy) - (after.own - before.own)) / elapsed


def threads_for(others: float, cores: int, full: int) -> int:
    """Threads to run beside other processes that use ``others`` cores of ``cores``: one per
    core they leave free (a core counts as taken from half of it used), at least 1, at most
    ``full``."""
    return max(1, min(full, cores - math.floor(others + 0.5)))


def explicit_choice(setting) -> str | None:
    """What fixes the thread count, in words, or None when it is left to :class:`AdaptiveThreads`."""
    if setting != "auto":
        return f"threads={setting}"
    if os.environ.get("OMP_NUM_THREADS"):
        return f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    return None


class AdaptiveThreads:
    """torch's thread count for one run: the configured one, or adapted to the other processes'
    load. Create it early (its first window starts then), call :meth:`start` before the first
    step, :meth:`check` after every step (it measures only every :data:`CHECK_EVERY` seconds;
    otherwise it returns at once), and :meth:`close` at the end (restores the count it found).
    ``start`` and ``check`` return a line to print when they change the count, else None."""

    def __init__(self, proc: Path | None = None, clock=time.monotonic, sleep=time.sleep):
        self.proc, self.clock, self.sleep = proc or PROC, clock, sleep
        self.found = torch.get_num_threads()     # the count before the run; restored by close()
        self.full = self.found                    # the most this run uses
        self.cpus = available_cpus()
        self.last, self.last_time = sample(self.proc, self.cpus), clock()
        self.adapting = False
        self.others = None                        # cores the others used in the last window

    def start(self, setting="auto") -> str | None:
        """Apply ``setting`` (a number of threads, or "auto": adapt unless ``OMP_NUM_THREADS``
        is set) and, when adapting, decide on the load measured since creation (waiting until
        the window is :data:`MIN_WINDOW` long)."""
        if setting != "auto":
            torch.set_num_threads(setting)
            self.full = setting
        self.adapting = explicit_choice(setting) is None and self.last is not None
        if not self.adapting:
            return None
        self.sleep(max(0.0, MIN_WINDOW - (self.clock() - self.last_time)))
        return self.check(now=True)

    def check(self, now: bool = False) -> str | None:
        """Every :data:`CHECK_EVERY` seconds (or ``now``): the other processes' load since the
        last check, and the thread count that leaves them their cores."""
        if not self.adapting or (not now and self.clock() - self.last_time < CHECK_EVERY):
            return None
        current = sample(self.proc, self.cpus)
        if current is None:
            return None
        cores = len(self.cpus)
        self.others = others_cores(self.last, current, cores)
        self.last, self.last_time = current, self.clock()
        before, threads = torch.get_num_threads(), threads_for(self.others, cores, self.full)
        if threads == before:
            return None
        torch.set_num_threads(threads)
        return (f"other processes use {self.others:.1f} of {cores} cores: training on "
                f"{threads} thread{'s' if threads > 1 else ''}")

    def close(self):
        """Give torch back the thread count it had before the run."""
        if torch.get_num_threads() != self.found:
            torch.set_num_threads(self.found)
