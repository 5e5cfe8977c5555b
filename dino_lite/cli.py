"""Command line: ``python -m dino_lite {train,knn,linear,finetune,attention,ablate,config} ...``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from .config import METHODS, PRESETS, make_config


def _add_model_source(p):
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a dino_lite checkpoint.pt (its teacher backbone is used)")
    src.add_argument("--preset", choices=sorted(PRESETS), help="with --random-init: an untrained network")
    p.add_argument("--random-init", action="store_true", help="evaluate a randomly initialised backbone")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def _backbone(args):
    """The backbone to evaluate, on this process's device (sharded evaluation under torchrun)."""
    from .checkpoint import backbone_from_checkpoint
    from .evaluate import random_init_backbone
    from .train import distributed_setup
    rank, _, device = distributed_setup()
    args.rank = rank
    if args.checkpoint:
        if args.random_init:
            raise SystemExit("--random-init goes with --preset, not --checkpoint")
        backbone, cfg = backbone_from_checkpoint(args.checkpoint)
    elif not args.random_init:
        raise SystemExit("--preset needs --random-init (or pass --checkpoint PATH)")
    else:
        cfg = make_config(args.preset, sets=args.set)
        backbone = random_init_backbone(cfg)
    if "data" in vars(args):                  # evaluation commands default to the training data
        args.data = args.data or cfg.data
    return backbone.to(device), cfg


def _report(args, name, value, **extra):
    """Print the result on rank 0, and with --json a last line holding one JSON object."""
    if args.rank > 0:
        return
    label = {"knn_top1": "k-NN top-1", "linear_top1": "linear-probe top-1",
             "finetune_top1": "fine-tune top-1"}[name]
    print(f"{label}: {value * 100:.1f}%")
    if args.json:
        print(json.dumps({name: value, "data": args.data, **extra,
                          "model": args.checkpoint or f"{args.preset} (random init)"}))


def train_config(preset, sets=(), **given):
    """The config `train` runs: the preset, the given options that are not None, then ``sets``."""
    cfg = make_config(preset, {k: v for k, v in given.items() if v is not None}, list(sets))
    if (given.get("epochs") is not None or given.get("max_steps") is not None) \
            and given.get("minutes") is None:
        cfg.minutes = None      # --epochs / --max-steps ask for a length, not the preset's time budget
    return cfg


def cmd_train(args):
    from .train import train
    cfg = train_config(args.preset, args.set, data=args.data, epochs=args.epochs,
                       minutes=args.minutes, max_steps=args.max_steps, seed=args.seed,
                       method=args.method)
    out = Path(args.out or f"runs/{cfg.name}" + ("" if cfg.method == "dino" else f"-{cfg.method}"))
    trainer = train(cfg, out, resume=args.resume)
    if trainer.rank == 0:
        last = trainer.history[-1] if trainer.history else None
        msg = f"checkpoint: {out / 'checkpoint.pt'} ({trainer.step} steps)"
        if last:
            msg += f"; last loss {last['loss']:.3f}"
            if "teacher_entropy" in last:
                msg += f", teacher entropy {last['teacher_entropy']:.2f}"
        print(msg)


def cmd_knn(args):
    from .evaluate import knn_accuracy
    backbone, cfg = _backbone(args)
    acc = knn_accuracy(backbone, cfg, data=args.data, k=args.k, temperature=args.temperature,
                       progress=not args.json)
    _report(args, "knn_top1", acc, k=args.k)


def cmd_linear(args):
    from .evaluate import linear_accuracy
    backbone, cfg = _backbone(args)
    acc = linear_accuracy(backbone, cfg, data=args.data, epochs=args.epochs, lr=args.lr,
                          progress=not args.json)
    _report(args, "linear_top1", acc, epochs=args.epochs)


def cmd_finetune(args):
    from .evaluate import finetune_accuracy
    backbone, cfg = _backbone(args)
    acc = finetune_accuracy(backbone, cfg, data=args.data, epochs=args.epochs, lr=args.lr,
                            batch_size=args.batch_size, max_steps=args.max_steps,
                            progress=not args.json)
    _report(args, "finetune_top1", acc, epochs=args.epochs, max_steps=args.max_steps)


def cmd_attention(args):
    import matplotlib
    matplotlib.use("Agg")
    from .attention import (attention_maps, load_image_folder, overlay_figure, score_maps,
                            shapes_attention_set)
    backbone, cfg = _backbone(args)
    size = args.image_size or cfg.image_size
    if args.images == "shapes":
        x, names, masks, valid = shapes_attention_set(size, args.limit or 200)
    else:
        x, names, masks, valid = load_image_folder(args.images, size, args.masks,
                                                   args.mask_format == "trimap", args.limit)
    maps = torch.cat([attention_maps(backbone, x[i:i + 64]) for i in range(0, len(x), 64)])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig = overlay_figure(x, maps, masks, names=names)
    fig.savefig(out / "attention.png", dpi=110)
    result = {"images": len(x), "figure": str(out / "attention.png")}
    if masks is not None:
        scores = score_maps(maps, masks, valid)
        result.update({k: scores[k] for k in ("jaccard", "jaccard_best_head", "object_mass", "object_area")})
        print(f"attention Jaccard (head mean): {scores['jaccard']:.3f}, "
              f"best head: {scores['jaccard_best_head']:.3f} over {len(x)} images")
        print(f"attention on the object: {scores['object_mass']:.0%} of the head-mean map's mass "
              f"(the object covers {scores['object_area']:.0%} of the image)")
    print(f"figure: {out / 'attention.png'}")
    if args.json:
        print(json.dumps(result))


def cmd_smalldata(args):
    from .smalldata import parse_list, run_smalldata
    methods = parse_list(args.methods, str, "methods")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown methods {bad}; choose from {METHODS}")
    fractions = parse_list(args.fractions, float, "fractions")
    summary = run_smalldata(args.preset, methods, fractions, args.out, args.steps,
                            {"epochs": args.finetune_epochs, "max_steps": args.finetune_steps},
                            data=args.data, seed=args.seed, sets=args.set, progress=not args.json)
    print(Path(args.out, "smalldata.md").read_text())
    if args.json:
        print(json.dumps({"cells": [{k: c[k] for k in ("method", "fraction", "finetune_top1",
                                                       "knn_top1", "linear_top1")}
                                    for c in summary["cells"]],
                          "random_init": {"finetune_top1": summary["random_init"]["finetune_top1"]}}))


def cmd_ablate(args):
    from .ablate import parse_rows, run_ablation
    rows = parse_rows(args.rows)
    cfg = train_config(args.preset, args.set, data=args.data, minutes=args.minutes,
                       max_steps=args.max_steps, seed=args.seed)
    out = Path(args.out or f"runs/ablate-{cfg.name}")
    summary = run_ablation(cfg, rows, out, eval_every=args.eval_every, progress=not args.json)
    print((out / "ablation.md").read_text())
    print(f"table: {out / 'ablation.md'} and {out / 'ablation.json'}")
    if args.json:
        keep = ("name", "knn_top1", "linear_top1", "collapsed", "information", "steps")
        print(json.dumps({"rows": [{k: r[k] for k in keep} for r in summary["rows"]],
                          "random_init": summary["random_init"], "data": cfg.data,
                          "table": str(out / "ablation.md")}))


def cmd_config(args):
    cfg = make_config(args.preset, sets=args.set)
    print(json.dumps(cfg.to_dict()) if args.json else cfg.to_json())


def build_parser():
    p = argparse.ArgumentParser(prog="python -m dino_lite", description=__doc__)
    p.add_argument("--local-rank", "--local_rank", type=int, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train DINO, BEiT or SplitMask")
    t.add_argument("--preset", default="cpu-demo", choices=sorted(PRESETS))
    t.add_argument("--method", choices=METHODS,
                   help="dino (default), or a masked image model: beit, splitmask (the preset gives "
                        "data, backbone, crop size and budget; the method its objective and optimiser)")
    t.add_argument("--data", help="shapes, a folder with train/ and val/, or cifar10/stl10/imagenette")
    budget = t.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, help="time budget; schedules fit the steps that fit")
    budget.add_argument("--epochs", type=int)
    t.add_argument("--max-steps", type=int)
    t.add_argument("--out", help="run directory (default runs/PRESET)")
    t.add_argument("--seed", type=int)
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    t.set_defaults(func=cmd_train)

    k = sub.add_parser("knn", help="weighted k-NN top-1 of frozen features")
    _add_model_source(k)
    k.add_argument("--data", help="dataset spec (default: the one the model was trained on)")
    k.add_argument("--k", type=int, default=20)
    k.add_argument("--temperature", type=float, default=0.07)
    k.set_defaults(func=cmd_knn)

    lin = sub.add_parser("linear", help="linear probe on frozen features (CLS + mean patch token)")
    _add_model_source(lin)
    lin.add_argument("--data", help="dataset spec (default: the one the model was trained on)")
    lin.add_argument("--epochs", type=int, default=100)
    lin.add_argument("--lr", type=float, default=0.1, help="SGD lr on standardised features")
    lin.set_defaults(func=cmd_linear)

    f = sub.add_parser("finetune", help="backbone + new linear head trained end to end")
    _add_model_source(f)
    f.add_argument("--data", help="labelled dataset spec (default: the one the model was trained on)")
    f.add_argument("--epochs", type=int, default=10)
    f.add_argument("--max-steps", type=int, help="stop after this many steps")
    f.add_argument("--lr", type=float, default=1e-4, help="AdamW lr at batch 256 (scaled linearly)")
    f.add_argument("--batch-size", type=int, default=64)
    f.set_defaults(func=cmd_finetune)

    a = sub.add_parser("attention", help="last-block attention maps, masks and Jaccard")
    _add_model_source(a)
    a.add_argument("--images", required=True, help="a folder of images, or 'shapes'")
    a.add_argument("--masks", help="folder of PNG masks named like the images")
    a.add_argument("--mask-format", choices=["binary", "trimap"], default="binary",
                   help="binary: nonzero = object; trimap (Oxford-IIIT Pet): 1 = object, 3 ignored")
    a.add_argument("--image-size", type=int)
    a.add_argument("--limit", type=int, help="use at most this many images")
    a.add_argument("--out", default="runs/attention")
    a.set_defaults(func=cmd_attention)

    ab = sub.add_parser("ablate", help="the paper's ablation rows, same seed and budget each")
    ab.add_argument("--rows", default="all", help="'all' or comma-separated row names (see README)")
    ab.add_argument("--preset", default="cpu-demo", choices=sorted(PRESETS), help="the base recipe")
    ab.add_argument("--data", help="dataset spec (default: the preset's)")
    ab_budget = ab.add_mutually_exclusive_group(required=True)
    ab_budget.add_argument("--minutes", type=float, help="time budget per row")
    ab_budget.add_argument("--max-steps", type=int, help="steps per row (deterministic)")
    ab.add_argument("--eval-every", type=int, help="also record the teacher's k-NN every N steps")
    ab.add_argument("--seed", type=int)
    ab.add_argument("--out", help="output directory (default runs/ablate-PRESET)")
    ab.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ab.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ab.set_defaults(func=cmd_ablate)

    sd = sub.add_parser("smalldata", help="pre-train each method on fractions of the data, then fine-tune")
    sd.add_argument("--preset", default="tinyimagenet", choices=sorted(PRESETS))
    sd.add_argument("--data", help="dataset spec (default: the preset's)")
    sd.add_argument("--fractions", default="0.1,1", help="comma-separated shares of the training images")
    sd.add_argument("--methods", default="dino,beit,splitmask")
    sd.add_argument("--steps", type=int, required=True, help="pre-training steps, the same for every cell")
    sd.add_argument("--finetune-epochs", type=int, default=10)
    sd.add_argument("--finetune-steps", type=int, help="fine-tuning steps (default: its epochs)")
    sd.add_argument("--out", default="runs/smalldata")
    sd.add_argument("--seed", type=int)
    sd.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    sd.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    sd.set_defaults(func=cmd_smalldata)

    c = sub.add_parser("config", help="print the resolved configuration")
    c.add_argument("--preset", default="cpu-demo", choices=sorted(PRESETS))
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_config)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.local_rank is not None:          # torch.distributed.launch style; torchrun sets the env
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    try:
        args.func(args)
        _leave_process_group(wait=True)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        _leave_process_group(wait=False)
        sys.exit(2)


def _leave_process_group(wait):
    """Under torchrun, tear the process group down before the interpreter exits: left to the
    exit handlers, gloo's threads can abort a finished process ("terminate called without an
    active exception"). After success the ranks first meet, so none leaves while another still
    talks to it."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()
