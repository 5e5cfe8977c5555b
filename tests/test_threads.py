"""Adaptive threads: torch trains on the cores other processes leave free (dino_lite.threads).

The load is simulated with a fake /proc folder (the files the module reads, written as Linux
writes them) and a fake clock, so the tests do not depend on this machine's load."""

import pytest
import torch

from conftest import tiny_config
from dino_lite import threads
from dino_lite.config import make_config
from dino_lite.threads import AdaptiveThreads, CpuSample, parse_process_times, parse_stat
from dino_lite.train import read_log, train

HZ = 100        # jiffies per second


def process_stat(pid, name, utime, stime, cutime=0, cstime=0):
    """A /proc/PID/stat line (52 fields; utime, stime, cutime, cstime are fields 14-17)."""
    after = ["S", "1", pid, pid, "0", "-1", "4194304", "100", "0", "0", "0",
             utime, stime, cutime, cstime] + ["0"] * 37
    return f"{pid} ({name}) " + " ".join(str(x) for x in after) + "\n"


class FakeProc:
    """A /proc folder on 2 CPUs whose counters move as ``advance`` says: ``others`` cores used
    by other processes, ``own`` by this process, ``child`` by a live child (a data-loader
    worker), ``ended`` by children that ended and were waited for."""

    def __init__(self, root):
        self.root, self.now = root, 1000.0
        self.busy, self.idle = 40000.0, 90000.0        # since boot
        self.own = self.child = self.ended = 0.0
        (root / "self" / "task" / "11").mkdir(parents=True)
        (root / "77").mkdir()
        self.write()

    def clock(self):
        return self.now

    def advance(self, seconds, others=0.0, own=0.0, child=0.0, ended=0.0):
        self.now += seconds
        used = others + own + child + ended
        self.busy += used * seconds * HZ
        self.idle += (2 - used) * seconds * HZ
        self.own += own * seconds * HZ
        self.child += child * seconds * HZ
        self.ended += ended * seconds * HZ
        self.write()

    def write(self):
        per_cpu = [round(self.busy / 2), 0, 0, round(self.idle / 2), 0, 0, 0, 5, 0, 0]
        lines = [f"cpu{i} " + " ".join(map(str, per_cpu)) for i in range(2)]
        (self.root / "stat").write_text("cpu 0 0 0 0 0 0 0 0 0 0\n" + "\n".join(lines) + "\nintr 1 2\n")
        (self.root / "self" / "stat").write_text(
            process_stat(11, "python", round(self.own), 0, round(self.ended), 0))
        (self.root / "self" / "task" / "11" / "children").write_text("77 " if self.child else "")
        (self.root / "77" / "stat").write_text(process_stat(77, "pt_data_worker", round(self.child), 0))


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A fake /proc on CPUs 0 and 1, torch on 2 threads, OMP_NUM_THREADS unset; torch's thread
    count is put back afterwards."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "available_cpus", lambda: {0, 1})
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield FakeProc(tmp_path / "proc")
    torch.set_num_threads(before)


def adaptive(fake):
    return AdaptiveThreads(proc=fake.root, clock=fake.clock, sleep=lambda s: fake.advance(s))


def test_proc_files_are_parsed_as_linux_writes_them():
    stat = ("cpu  30 3 12 200 7 1 2 9 0 0\n"
            "cpu0 10 1 4 100 3 0 1 4 0 0\n"
            "cpu1 5 0 2 50 1 1 0 2 0 0\n"
            "cpu2 15 2 6 50 3 0 1 3 0 0\n"
            "intr 12345 0 0\n")
    # CPUs 0 and 2: busy = user + nice + system + irq + softirq = (10+1+4+0+1) + (15+2+6+0+1);
    # total adds idle and iowait (steal left out) = 16 + 100 + 3 + 24 + 50 + 3
    assert parse_stat(stat, {0, 2}) == (40, 196)
    assert parse_stat(stat, {1}) == (8, 59)
    line = process_stat(4242, "a (strange) name", utime=120, stime=30, cutime=7, cstime=3)
    assert parse_process_times(line) == 160
    assert parse_process_times(line, ended_children=False) == 150


@pytest.mark.parametrize("others, cores, full, expected", [
    (0.0, 2, 2, 2), (0.49, 2, 2, 2), (0.5, 2, 2, 1), (1.0, 2, 2, 1), (1.9, 2, 2, 1),
    (1.0, 4, 2, 2), (2.4, 8, 8, 6), (0.0, 8, 3, 3)])
def test_one_thread_per_core_the_others_leave_free(others, cores, full, expected):
    assert threads.threads_for(others, cores, full) == expected


def test_others_are_the_busy_time_minus_this_process():
    a = CpuSample(busy=1000, total=4000, own=300)
    b = CpuSample(busy=1300, total=4400, own=450)      # 2 CPUs, 200 jiffies each: 1.5 busy, 0.75 own
    assert threads.others_cores(a, b, 2) == pytest.approx(0.75)
    assert threads.others_cores(a, CpuSample(1100, 4400, 450), 2) == 0.0   # never negative


def test_a_busy_process_gives_one_thread_on_two_cores(fake):
    t = adaptive(fake)
    fake.advance(2, others=1.0, own=1.0)
    line = t.start("auto")
    assert torch.get_num_threads() == 1
    assert line == "other processes use 1.0 of 2 cores: training on 1 thread"
    assert t.others == pytest.approx(1.0)


def test_an_idle_machine_keeps_every_thread(fake):
    t = adaptive(fake)
    fake.advance(2, others=0.1, own=1.9)
    assert t.start("auto") is None
    fake.advance(threads.CHECK_EVERY, others=0.2, own=1.8)
    assert t.check() is None
    assert torch.get_num_threads() == 2


def test_the_threads_come_back_when_the_load_stops(fake):
    t = adaptive(fake)
    fake.advance(2, others=1.0, own=1.0)
    t.start("auto")
    assert torch.get_num_threads() == 1
    fake.advance(threads.CHECK_EVERY / 2, others=0.0, own=1.0)
    assert t.check() is None                    # not yet time to measure: nothing read
    assert torch.get_num_threads() == 1
    fake.advance(threads.CHECK_EVERY / 2, others=0.0, own=1.0)
    assert t.check() == "other processes use 0.0 of 2 cores: training on 2 threads"
    assert torch.get_num_threads() == 2
    fake.advance(threads.CHECK_EVERY, others=1.0, own=1.0)     # and back again
    assert t.check() is not None and torch.get_num_threads() == 1
    t.close()
    assert torch.get_num_threads() == 2         # the count found before the run


def test_a_short_first_window_is_waited_out(fake):
    slept = []

    def sleep(seconds):              # this process sleeps; the other one keeps its core busy
        slept.append(seconds)
        fake.advance(seconds, others=1.0)
    t = AdaptiveThreads(proc=fake.root, clock=fake.clock, sleep=sleep)
    fake.advance(0.1, others=1.0, own=1.0)
    t.start("auto")
    assert slept == [pytest.approx(threads.MIN_WINDOW - 0.1)]
    assert torch.get_num_threads() == 1


def test_own_data_loader_workers_are_not_other_processes(fake):
    t = adaptive(fake)
    fake.advance(2, own=1.0, child=0.9)                     # a live worker beside the main process
    assert t.start("auto") is None and torch.get_num_threads() == 2
    fake.advance(threads.CHECK_EVERY, own=1.0, ended=0.9)   # workers of an epoch that ended
    assert t.check() is None and torch.get_num_threads() == 2


@pytest.mark.parametrize("how", ["config", "environment"])
def test_an_explicit_thread_count_is_never_changed(fake, monkeypatch, how):
    setting = 2
    if how == "config":
        torch.set_num_threads(1)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        setting = "auto"
    t = adaptive(fake)
    fake.advance(2, others=1.0, own=1.0)
    assert t.start(setting) is None
    assert torch.get_num_threads() == 2
    for _ in range(3):
        fake.advance(threads.CHECK_EVERY, others=1.0, own=1.0)
        assert t.check(now=True) is None
        assert torch.get_num_threads() == 2
    t.close()
    assert torch.get_num_threads() == (1 if how == "config" else 2)


def test_without_proc_nothing_changes(fake, tmp_path):
    t = AdaptiveThreads(proc=tmp_path / "absent")
    assert t.start("auto") is None
    assert t.check(now=True) is None
    assert torch.get_num_threads() == 2


def test_the_config_takes_auto_or_a_positive_count():
    assert make_config("cpu-demo").threads == "auto"
    assert make_config("cpu-demo", sets=["threads=1"]).threads == 1
    assert make_config("cpu-demo", sets=["threads=AUTO"]).threads == "auto"
    for bad in ("0", "two", "1.5"):
        with pytest.raises(ValueError, match="threads"):
            make_config("cpu-demo", sets=[f"threads={bad}"])


def test_the_trainer_adapts_between_steps_and_logs_the_threads(tiny_folder, tmp_path, monkeypatch,
                                                               capsys):
    # /proc as on a machine where another process keeps one core busy for the first 2 readings
    # and stops before the third: steps run on 1 thread, then on 2 again
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "CHECK_EVERY", 0.0)
    monkeypatch.setattr(threads, "MIN_WINDOW", 0.0)
    monkeypatch.setattr(threads, "available_cpus", lambda: {0, 1})
    readings = iter([(0, 0), (300, 400), (500, 800), (520, 1200), (540, 1600)])   # (busy, total)
    monkeypatch.setattr(threads, "sample", lambda proc, cpus: CpuSample(*next(readings), own=0))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        train(tiny_config(tiny_folder, max_steps=3), tmp_path, progress=False)
        assert torch.get_num_threads() == 2          # given back at the end of the run
    finally:
        torch.set_num_threads(before)
    # 2 CPUs, this process using none: others = busy jiffies / (total jiffies / 2). Readings:
    # at creation; at start 1.5 cores -> 1 thread; after step 0, 1.0 -> 1; after step 1,
    # 0.1 -> 2; after step 2, 0.1 -> 2
    log = read_log(tmp_path)
    assert [r["threads"] for r in log] == [1, 1, 2]
    err = capsys.readouterr().err
    assert "other processes use 1.5 of 2 cores: training on 1 thread\n" in err
    assert "other processes use 0.1 of 2 cores: training on 2 threads\n" in err
