"""Scale-out: torchrun with 2 CPU processes matches 1 process, the launcher, SLURM requeue and
the paper's presets (loading official checkpoints: test_checkpoint.py)."""

import json

import pytest
import torch

from conftest import is_share_of, mim_train_args, torchrun
from dino_lite.cli import main
from dino_lite.config import make_config
from dino_lite.launch import SlurmTrain, launch
from dino_lite.train import read_log

NO_BN_FP32 = ["--set", "stem=patch", "--set", "head_bn=false", "--set", "bf16=false"]
TINY = ["image_size=32", "global_size=32", "local_size=16", "n_local=2", "depth=2", "out_dim=64",
        "head_hidden=64", "head_bottleneck=32", "batch_size=16", "num_workers=0"]


def _train_cmd(data, out, steps):
    args = ["train", "--preset", "cpu-demo", "--data", str(data), "--max-steps", str(steps),
            "--out", str(out)]
    return args + [a for s in TINY for a in ("--set", s)]


# -- 2 processes follow 1 ----------------------------------------------------------------------
# Every 2-process command of this file runs in ONE torchrun launch (a launch costs seconds of
# start-up): the driver runs them one after another in the same two workers, each command's
# stdout to its own file per rank. Where the command line leaves the process group after its
# command, the driver keeps it for the next one and leaves it once, at the end.

SWITCHES = ["centering=sinkhorn_knopp", "loss=infonce", "ibot=1"]
MIM = ["beit", "splitmask"]

DRIVER = """
import contextlib, json, os, sys
import torch.distributed as dist
import dino_lite.cli as cli
from dino_lite.cli import main
leave = cli._leave_process_group
cli._leave_process_group = lambda wait: None    # stay in the group for the next command
out, rank = sys.argv[1], os.environ["RANK"]
for name, argv in json.load(open(os.path.join(out, "cases.json"))).items():
    print(f"command {name}: {' '.join(argv)}", file=sys.stderr, flush=True)
    with open(os.path.join(out, f"{name}.rank{rank}.out"), "w") as f, contextlib.redirect_stdout(f):
        main(argv)
    dist.barrier()
    open(os.path.join(out, f"{name}.rank{rank}.done"), "w").close()
leave(wait=True)
"""


def _cases(tiny_folder, out):
    """Each 2-process command by name (all write under ``out``)."""
    cases = {"ddp8": _train_cmd(tiny_folder, out / "ddp8", 8) + NO_BN_FP32,
             "knn": ["knn", "--checkpoint", str(out / "ddp8" / "checkpoint.pt"), "--json"],
             "cpu-demo": ["train", "--preset", "cpu-demo", "--max-steps", "10", "--out",
                          str(out / "cpu-demo")]}
    for switch in SWITCHES:
        cases[switch] = _train_cmd(tiny_folder, out / switch, 4) + NO_BN_FP32 + ["--set", switch]
    cases["accumulate"] = (_train_cmd(tiny_folder, out / "accumulate", 4) + NO_BN_FP32
                           + ["--set", "ibot=1", "--set", "accumulate=2"])
    for method in MIM:
        cases[method] = mim_train_args(method, tiny_folder, out / method, 4, "drop_path=0")
    return cases


def _needs(item) -> list[str]:
    """The 2-process commands a test of this module reads."""
    params = getattr(item, "callspec", None) and item.callspec.params or {}
    return {"test_two_processes_match_one_process_with_the_same_global_batch": ["ddp8"],
            "test_knn_under_torchrun_gathers_features_of_every_image": ["ddp8", "knn"],
            "test_linear_and_finetune_run_on_the_checkpoint": ["ddp8"],
            "test_global_batch_losses_match_across_processes": [params.get("switch")],
            "test_masked_methods_on_two_processes_follow_one_process": [params.get("method")],
            "test_cpu_demo_on_two_processes_tracks_one_process": ["cpu-demo"],
            "test_two_processes_accumulating_follow_one_process_with_the_whole_batch": ["accumulate"],
            }.get(item.originalname, [])


class TwoProcessRuns:
    """The outcome of the one torchrun launch: a folder per command, its stdout per rank."""

    def __init__(self, out, result):
        self.out, self.result = out, result

    def __call__(self, name):
        """The folder of command ``name``, asserting that it ran to its end on both ranks."""
        done = all((self.out / f"{name}.rank{r}.done").exists() for r in (0, 1))
        assert done, (f"the 2-process command {name!r} did not finish (torchrun exit code "
                      f"{self.result.returncode}):\n{self.result.stderr[-3000:]}")
        return self.out / name

    def stdout(self, name):
        return "".join((self.out / f"{name}.rank{r}.out").read_text() for r in (0, 1))


@pytest.fixture(scope="module")
def two_process(request, tiny_folder, tmp_path_factory):
    """Runs, in one torchrun launch, the 2-process commands that the selected tests need."""
    needed = {n for item in request.session.items       # (notebook cells have no module)
              if getattr(getattr(item, "module", None), "__name__", None) == __name__
              for n in _needs(item)}
    if "cpu-demo" in needed:
        from dino_lite.data import build_dataset
        build_dataset("shapes", train=True), build_dataset("shapes", train=False)   # cache once
    out = tmp_path_factory.mktemp("ddp2")
    cases = {name: argv for name, argv in _cases(tiny_folder, out).items() if name in needed}
    (out / "cases.json").write_text(json.dumps(cases))
    (out / "driver.py").write_text(DRIVER)
    return TwoProcessRuns(out, torchrun([str(out / "driver.py"), str(out)], timeout=600))


def _same_losses(one, two, steps, tolerance):
    one, two = read_log(one), read_log(two)
    assert [r["step"] for r in two] == list(range(steps))
    diffs = [abs(a["loss"] - b["loss"]) for a, b in zip(one, two)]
    assert max(diffs) < tolerance, diffs


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(two_process, tiny_folder,
                                                                     tmp_path):
    """Same images, augmentations and init on 1 or 2 processes: without BatchNorm, in fp32, the
    runs agree up to the order of floating-point sums."""
    two = two_process("ddp8")
    main(_train_cmd(tiny_folder, tmp_path, 8) + NO_BN_FP32)
    assert list(two.glob("*.pt")) == [two / "checkpoint.pt"]
    _same_losses(tmp_path, two, 8, 1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("switch", SWITCHES)
def test_global_batch_losses_match_across_processes(switch, two_process, tiny_folder, tmp_path):
    """Sinkhorn-Knopp's equipartition, InfoNCE's negatives and iBOT's mean over hidden patches
    span the global batch: with the rows split over 2 processes the losses equal the 1-process
    run's."""
    two = two_process(switch)
    main(_train_cmd(tiny_folder, tmp_path / "one", 4) + NO_BN_FP32 + ["--set", switch])
    _same_losses(tmp_path / "one", two, 4, 1e-3)


@pytest.mark.slow
def test_two_processes_accumulating_follow_one_process_with_the_whole_batch(two_process,
                                                                            tiny_folder, tmp_path):
    """2 processes of 2 micro-batches each (4 images) take the steps of 1 process with the whole
    batch of 16: the gradients are averaged once per step, the centers and iBOT's patch mean
    span the global batch."""
    two = two_process("accumulate")
    main(_train_cmd(tiny_folder, tmp_path, 4) + NO_BN_FP32 + ["--set", "ibot=1"])
    _same_losses(tmp_path, two, 4, 1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("method", MIM)
def test_masked_methods_on_two_processes_follow_one_process(method, two_process, tiny_folder, tmp_path):
    """Same images, masks and init on 1 or 2 processes (BEiT's mean over the global batch's masked
    patches, SplitMask's negatives gathered across processes): the losses agree. Drop path is off:
    its draws depend on how the rows are split."""
    two = two_process(method)
    main(mim_train_args(method, tiny_folder, tmp_path / "one", 4, "drop_path=0"))
    _same_losses(tmp_path / "one", two, 4, 1e-3)


@pytest.mark.slow
def test_cpu_demo_on_two_processes_tracks_one_process(two_process, tmp_path):
    """The cpu-demo preset itself (conv stem and head with BatchNorm, whose statistics are per
    process on CPU: SyncBatchNorm is GPU-only) stays within a small tolerance of 1 process."""
    two = two_process("cpu-demo")
    main(["train", "--preset", "cpu-demo", "--max-steps", "10", "--out", str(tmp_path / "one")])
    assert len(read_log(tmp_path / "one")) == 10
    _same_losses(tmp_path / "one", two, 10, 0.05)


@pytest.mark.slow
def test_knn_under_torchrun_gathers_features_of_every_image(two_process, capsys):
    ckpt = str(two_process("ddp8") / "checkpoint.pt")
    two_process("knn")
    lines = [line for line in two_process.stdout("knn").splitlines() if line.startswith("{")]
    assert len(lines) == 1                                   # rank 0 alone reports
    main(["knn", "--checkpoint", ckpt, "--json"])
    single = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads(lines[0])["knn_top1"] == pytest.approx(single["knn_top1"], abs=1e-6)


@pytest.mark.slow
def test_linear_and_finetune_run_on_the_checkpoint(two_process, capsys):
    ckpt = str(two_process("ddp8") / "checkpoint.pt")
    main(["linear", "--checkpoint", ckpt, "--epochs", "5", "--json"])
    lin = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    main(["finetune", "--checkpoint", ckpt, "--max-steps", "3", "--json"])
    ft = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert is_share_of(lin["linear_top1"], 12) and is_share_of(ft["finetune_top1"], 12)


def test_launcher_prints_the_8_gpu_imagenet_command():
    plan = launch("imagenet-vits16", gpus=8, epochs=100, data="/datasets/imagenet")
    assert str(plan) == ("torchrun --standalone --nproc_per_node=8 -m dino_lite train --preset "
                         "imagenet-vits16 --out runs/imagenet-vits16 --data /datasets/imagenet "
                         "--epochs 100")
    assert plan.processes == 8 and plan.config.batch_size == 1024 and plan.config.epochs == 100
    multi = launch("imagenet-vitb16", gpus=8, nodes=2)
    assert "--nnodes=2" in str(multi) and multi.processes == 16
    with pytest.raises(ValueError, match="does not split"):
        launch("cpu-demo", gpus=3)
    with pytest.raises(ValueError, match="backend"):
        launch("cpu-demo", backend="mpi")


def test_cpu_processes_started_by_the_launcher_share_the_cores(monkeypatch, tmp_path):
    import os
    import subprocess
    seen = {}
    monkeypatch.setenv("OMP_NUM_THREADS", "8")                  # meant for one process
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(subprocess, "run", lambda cmd, check, env: seen.update(cmd=cmd, env=env))
    launch("cpu-demo", gpus=2, max_steps=1, out=str(tmp_path), run=True)
    assert "--nproc_per_node=2" in seen["cmd"] and seen["env"]["OMP_NUM_THREADS"] == "2"  # 4 cores / 2
    launch("cpu-demo", gpus=4, max_steps=1, out=str(tmp_path), run=True)
    assert seen["env"]["OMP_NUM_THREADS"] == "1"


def test_slurm_job_requeues_itself_with_resume():
    job = SlurmTrain(["train", "--preset", "cpu-demo", "--out", "runs/x"])
    again = job.checkpoint()
    assert again.function.train_args[-1] == "--resume"
    assert again.function.checkpoint().function.train_args.count("--resume") == 1


def test_slurm_job_trains_through_submitit(tiny_folder, tmp_path):
    pytest.importorskip("submitit")
    job = launch("cpu-demo", TINY, data=str(tiny_folder), out=tmp_path, max_steps=3,
                 backend="slurm", run=True, slurm={"cluster": "debug"})
    job.result()
    assert [r["step"] for r in read_log(tmp_path)] == [0, 1, 2]


@pytest.mark.parametrize("preset,arch,patch", [("imagenet-vits16", "vit_small", 16),
                                               ("imagenet-vits8", "vit_small", 8),
                                               ("imagenet-vitb16", "vit_base", 16),
                                               ("imagenet-vitb8", "vit_base", 8),
                                               ("imagenet-resnet50", "resnet50", 16)])
def test_paper_presets(preset, arch, patch):
    cfg = make_config(preset)
    assert (cfg.arch, cfg.batch_size, cfg.epochs, cfg.out_dim) == (arch, 1024, 100, 65536)
    if arch.startswith("vit"):
        assert cfg.patch_size == patch and cfg.optimizer == "adamw" and cfg.lr == 0.0005
    else:
        assert cfg.optimizer == "sgd" and cfg.global_scale == (0.14, 1.0)


def test_sync_batchnorm_still_needs_a_gpu(tmp_path):
    """docs/robustness.md says that on CPU each process's BatchNorm uses its own share of the
    batch, because torch's SyncBatchNorm refuses CPU tensors. When a torch release lifts that,
    this test fails: then convert the BatchNorm layers on CPU too, and 2 processes follow 1."""
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        bn = torch.nn.SyncBatchNorm(4).train()
        with pytest.raises(ValueError, match="expected input tensor to be on GPU"):
            bn(torch.randn(8, 4))
    finally:
        dist.destroy_process_group()
