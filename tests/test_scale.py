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


@pytest.fixture(scope="module")
def two_process_run(tiny_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp2")
    r = torchrun(_train_cmd(tiny_folder, out, 8) + NO_BN_FP32)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(two_process_run, tiny_folder,
                                                                     tmp_path):
    """Same images, augmentations and init on 1 or 2 processes: without BatchNorm, in fp32, the
    runs agree up to the order of floating-point sums."""
    main(_train_cmd(tiny_folder, tmp_path, 8) + NO_BN_FP32)
    one, two = read_log(tmp_path), read_log(two_process_run)
    assert [r["step"] for r in two] == list(range(8))
    assert list(two_process_run.glob("*.pt")) == [two_process_run / "checkpoint.pt"]
    diffs = [abs(a["loss"] - b["loss"]) for a, b in zip(one, two)]
    assert max(diffs) < 1e-3, diffs


@pytest.mark.slow
@pytest.mark.parametrize("switch", ["centering=sinkhorn_knopp", "loss=infonce", "ibot=1"])
def test_global_batch_losses_match_across_processes(switch, tiny_folder, tmp_path):
    """Sinkhorn-Knopp's equipartition, InfoNCE's negatives and iBOT's mean over hidden patches
    span the global batch: with the rows split over 2 processes the losses equal the 1-process
    run's."""
    args = _train_cmd(tiny_folder, tmp_path / "two", 4) + NO_BN_FP32 + ["--set", switch]
    r = torchrun(args)
    assert r.returncode == 0, r.stderr[-3000:]
    main(_train_cmd(tiny_folder, tmp_path / "one", 4) + NO_BN_FP32 + ["--set", switch])
    one, two = read_log(tmp_path / "one"), read_log(tmp_path / "two")
    assert len(two) == 4
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(one, two)) < 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("method", ["beit", "splitmask"])
def test_masked_methods_on_two_processes_follow_one_process(method, tiny_folder, tmp_path):
    """Same images, masks and init on 1 or 2 processes (BEiT's mean over the global batch's masked
    patches, SplitMask's negatives gathered across processes): the losses agree. Drop path is off:
    its draws depend on how the rows are split."""
    r = torchrun(mim_train_args(method, tiny_folder, tmp_path / "two", 4, "drop_path=0"))
    assert r.returncode == 0, r.stderr[-3000:]
    main(mim_train_args(method, tiny_folder, tmp_path / "one", 4, "drop_path=0"))
    one, two = read_log(tmp_path / "one"), read_log(tmp_path / "two")
    assert len(two) == 4
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(one, two)) < 1e-3


@pytest.mark.slow
def test_cpu_demo_on_two_processes_tracks_one_process(tmp_path):
    """The cpu-demo preset itself (conv stem and head with BatchNorm, whose statistics are per
    process on CPU: SyncBatchNorm is GPU-only) stays within a small tolerance of 1 process."""
    from dino_lite.data import build_dataset
    build_dataset("shapes", train=True), build_dataset("shapes", train=False)   # cache once
    base = ["train", "--preset", "cpu-demo", "--max-steps", "10"]
    r = torchrun(base + ["--out", str(tmp_path / "two")])
    assert r.returncode == 0, r.stderr[-3000:]
    main(base + ["--out", str(tmp_path / "one")])
    one, two = read_log(tmp_path / "one"), read_log(tmp_path / "two")
    assert len(one) == len(two) == 10
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(one, two)) < 0.05


@pytest.mark.slow
def test_knn_under_torchrun_gathers_features_of_every_image(two_process_run, capsys):
    ckpt = str(two_process_run / "checkpoint.pt")
    r = torchrun(["knn", "--checkpoint", ckpt, "--json"])
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1                                   # rank 0 alone reports
    main(["knn", "--checkpoint", ckpt, "--json"])
    single = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads(lines[0])["knn_top1"] == pytest.approx(single["knn_top1"], abs=1e-6)


@pytest.mark.slow
def test_linear_and_finetune_run_on_the_checkpoint(two_process_run, capsys):
    ckpt = str(two_process_run / "checkpoint.pt")
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
