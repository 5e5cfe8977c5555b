"""Command line: ``python -m dino_lite {train,knn,linear,finetune,embed,attention,ablate,data,config,summary} ...``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from .checkpoint import CheckpointError, CheckpointKeyError
from .config import METHODS, PRESETS, make_config, train_config
from .data import DatasetError, require_labels
from .rundir import RunDirBusyError


def user_errors() -> tuple:
    """Exceptions that come from the user's input or environment, not from a bug: the command
    line prints them as one ``error:`` line (imported here, so `config` does not load the models)."""
    from .train import NonFiniteLossError
    return (ValueError, OSError, CheckpointError, CheckpointKeyError, DatasetError,
            RunDirBusyError, NonFiniteLossError)


def number(kind, low, strict=False, high=None):
    """An argparse type: a ``kind`` (int or float) at least ``low`` (above it when ``strict``)
    and at most ``high``; anything else is refused with the rule it breaks."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if not (value > low if strict else value >= low):
            raise argparse.ArgumentTypeError(
                f"must be {'greater than' if strict else 'at least'} {low}, got {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, got {value}")
        return value
    return parse


positive_int = number(int, 1)
non_negative_int = number(int, 0)
positive_float = number(float, 0, strict=True)
non_negative_float = number(float, 0)
unit_interval = number(float, 0, strict=True, high=1)       # (0, 1]


def _out_folder(path) -> Path:
    """An output folder that may not exist yet, but must not be a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"--out {path} is an existing file; pass a folder")
    return path


CHECKPOINT_HELP = ("a dino_lite checkpoint.pt (its teacher), official DINO or DINOv2 weights (.pth), "
                   "timm weights, a Hugging Face model.safetensors / pytorch_model.bin or its "
                   "folder; or hf:OWNER/REPO, dinov2_vits14[_reg], dinov2_vitb14[_reg], "
                   "dino_vits16, ... (downloaded when online)")


def _add_model_source(p):
    """--checkpoint or --preset with --random-init; returns the group, for other sources."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    src.add_argument("--preset", choices=sorted(PRESETS), help="with --random-init: an untrained network")
    p.add_argument("--random-init", action="store_true", help="evaluate a randomly initialised backbone")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--json", nargs="?", const=True, default=False, metavar="FILE",
                   help="print one JSON object as the last line; with FILE, write it there instead")
    return src


def _emit_json(args, obj):
    """``--json``: the object as the last line of the output; ``--json FILE``: into FILE."""
    if args.json is True:
        print(json.dumps(obj))
    elif args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj) + "\n")


def _progress(args) -> bool:
    """Progress bars, unless the output is one JSON line for a program to read."""
    return args.json is not True


def _backbone(args):
    """The backbone to evaluate, on this process's device (sharded evaluation under torchrun),
    and the precision it is evaluated in (printed, and in ``--json`` as ``precision``)."""
    from .checkpoint import backbone_from_checkpoint
    from .evaluate import evaluation_precision, for_evaluation, random_init_backbone, set_fused_attention
    from .train import distributed_setup
    rank, _, device = distributed_setup()
    args.rank = rank
    labels = getattr(args, "command", None) in ("knn", "linear", "finetune")
    if labels and args.data:                  # a folder without labels: say so before loading
        require_labels(args.data, args.command)
    if args.checkpoint:
        if args.random_init:
            raise SystemExit("--random-init goes with --preset, not --checkpoint")
        backbone, cfg = backbone_from_checkpoint(args.checkpoint)
        cfg = for_evaluation(cfg, args.set)       # --set: evaluation keys only, never ignored
        if cfg.fused_attention != "auto":         # else the kernel the loader chose stays
            set_fused_attention(backbone, cfg.fused_attention == "on")
    elif not args.random_init:
        raise SystemExit("--preset needs --random-init (or pass --checkpoint PATH)")
    else:
        from .precision import for_config
        cfg = make_config(args.preset, sets=args.set)
        cfg = cfg.for_precision(for_config(cfg, device.type).bf16, device.type)  # as `train` would
        backbone = random_init_backbone(cfg)
    if "data" in vars(args):                  # evaluation commands default to the training data
        args.data = args.data or cfg.data
        if labels:
            require_labels(args.data, args.command)
    backbone = backbone.to(device)
    args.precision = evaluation_precision(backbone, cfg)
    if rank == 0:
        print(f"evaluation {args.precision}")
    return backbone, cfg


def _report(args, name, value, **extra):
    """Print the result on rank 0, and with --json a last line holding one JSON object."""
    if args.rank > 0:
        return
    label = {"knn_top1": "k-NN top-1", "linear_top1": "linear-probe top-1",
             "finetune_top1": "fine-tune top-1"}[name]
    print(f"{label}: {value * 100:.1f}%")
    model = args.checkpoint or (f"{args.preset} (random init)" if args.preset else
                                f"features {getattr(args, 'features', None)}")
    _emit_json(args, {name: value, "data": args.data, **extra, "precision": _precision_name(args),
                      "model": model})


def cmd_train(args):
    from .methods import run_folder
    from .train import train
    cfg = train_config(args.preset, args.set, data=args.data, epochs=args.epochs,
                       minutes=args.minutes, max_steps=args.max_steps, seed=args.seed,
                       method=args.method)
    out = _out_folder(args.out or run_folder(cfg))
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
    if args.features or args.test_features:
        return _knn_from_files(args)
    from .evaluate import knn_accuracy
    backbone, cfg = _backbone(args)
    acc = knn_accuracy(backbone, cfg, data=args.data, k=args.k, temperature=args.temperature,
                       progress=_progress(args))
    _report(args, "knn_top1", acc, k=args.k)


def _knn_from_files(args):
    """knn --features TRAIN.npy --test-features TEST.npy: k-NN between two `embed` outputs."""
    from .embed import knn_from_files
    if not (args.features and args.test_features):
        raise ValueError("--features and --test-features go together: the embed outputs of the "
                         "training and of the test images")
    if args.random_init or args.set or args.data:
        raise ValueError("--features reads features already computed: --data, --random-init "
                         "and --set do not apply")
    args.rank, args.data = 0, args.test_features
    r = knn_from_files(args.features, args.test_features, k=args.k, temperature=args.temperature)
    print(f"k-NN from files: {r['test']} test images against {r['train']} training images, "
          f"{r['classes']} classes")
    _report(args, "knn_top1", r["knn_top1"], k=args.k, train=args.features)


def cmd_linear(args):
    from .evaluate import linear_accuracy
    backbone, cfg = _backbone(args)
    acc = linear_accuracy(backbone, cfg, data=args.data, epochs=args.epochs, lr=args.lr,
                          progress=_progress(args))
    _report(args, "linear_top1", acc, epochs=args.epochs)


def cmd_finetune(args):
    from .finetune import PRETRAINED_LAYER_DECAY, convergence_rule, finetune
    backbone, cfg = _backbone(args)
    result = finetune(backbone, cfg, data=args.data, epochs=args.epochs, lr=args.lr,
                      batch_size=args.batch_size, max_steps=args.max_steps,
                      warmup_epochs=args.warmup_epochs,
                      layer_decay=args.layer_decay or (1.0 if args.random_init else PRETRAINED_LAYER_DECAY),
                      drop_path=args.drop_path, label_smoothing=args.label_smoothing,
                      progress=_progress(args), seed=args.seed)
    if args.rank == 0:
        print("epoch  held-out top-1  training loss")
        for c in result["curve"]:
            print(f"{c['epoch']:5d}  {100 * c['top1']:13.1f}%  {c['train_loss']:13.3f}")
        state = {True: "converged", False: "NOT converged", None: "too few epochs to tell"}
        print(f"{state[result['converged']]} ({convergence_rule()})")
        if args.curve:
            import matplotlib
            matplotlib.use("Agg")
            from .finetune import curve_figure
            label = args.checkpoint or f"{args.preset} (random init)"
            curve_figure({label: [c["top1"] for c in result["curve"]]}).savefig(args.curve, dpi=110)
            print(f"figure: {args.curve}")
    _report(args, "finetune_top1", result["top1"], epochs=args.epochs, max_steps=args.max_steps,
            seed=args.seed, converged=result["converged"], curve=result["curve"], correct=result["correct"])


def cmd_embed(args):
    from .embed import embed_folder
    backbone, cfg = _backbone(args)
    if args.rank > 0:                      # under torchrun, one process writes the files
        return
    r = embed_folder(backbone, args.images, args.out, pool=args.pool,
                     image_size=args.image_size or cfg.image_size, batch_size=args.batch_size,
                     num_workers=args.num_workers, progress=_progress(args),
                     bf16=args.precision.bf16)
    what = {"cls": "the CLS token", "mean": "the mean patch token",
            "patch": f"{r['shape'][1]} patch tokens per image",
            "cls_gem": "the CLS token and the GeM-pooled patch tokens"}[args.pool]
    print(f"features: {r['features']}, float32 {r['shape']} ({what}); paths and classes, row "
          f"by row: {r['paths']}")
    if r["skipped"]:
        print(f"skipped {len(r['skipped'])} unreadable files, listed in {r['skipped_file']}")
    spread = None
    if args.pool != "patch" and r["images"] > 1:  # how many directions the features vary along
        import numpy as np

        from .collapse import feature_spread
        spread = feature_spread(np.load(r["features"], mmap_mode="r"))
        print(f"spread: effective rank {spread['effective_rank']:.1f} of {spread['dims']} dimensions "
              f"(the first direction holds {spread['top_share']:.0%} of the variance); mean cosine "
              f"between two images {spread['mean_cosine']:.2f}")
    _emit_json(args, {**r, "spread": spread, "precision": _precision_name(args)})


def cmd_attention(args):
    import matplotlib
    matplotlib.use("Agg")
    from .attention import (attention_maps, load_image_folder, overlay_figure, score_maps,
                            shapes_attention_set)
    if args.foreground and not args.pca:
        raise ValueError("--foreground is a step of the PCA view: add --pca")
    if args.video and args.pca:
        raise ValueError("--pca and --video are two different figures: choose one")
    if args.pca and args.masks:
        raise ValueError("--pca draws the PCA view of patch features; it scores no --masks")
    out = _out_folder(args.out)
    backbone, cfg = _backbone(args)
    size = args.image_size or cfg.image_size
    if cfg.arch.startswith("vit") and size % cfg.patch_size:
        raise ValueError(f"--image-size {size} is not a multiple of the model's patch size "
                         f"{cfg.patch_size}")
    if args.video:
        _attention_video(args, backbone, size, out)
        return
    if args.images == "shapes":
        x, names, masks, valid = shapes_attention_set(size, args.limit or 200)
    else:
        x, names, masks, valid = load_image_folder(args.images, size, args.masks,
                                                   args.mask_format == "trimap", args.limit)
    if args.pca:
        _pca_view(args, backbone, x, names, out)
        return
    from .methods import get_method
    cls_trained = get_method(cfg.method).trains_cls_attention
    if not cls_trained:
        print(f"note: {cfg.method}'s loss never reads the CLS token's output, so the last block's "
              "CLS attention got no gradient: these maps are a by-product of weights trained for "
              "the patch tokens, not where the encoder learned to look (--pca draws its patch "
              "features instead)", file=sys.stderr)
    maps = torch.cat([attention_maps(backbone, x[i:i + 64]) for i in range(0, len(x), 64)])
    out.mkdir(parents=True, exist_ok=True)
    fig = overlay_figure(x, maps, masks, names=names)
    fig.savefig(out / "attention.png", dpi=110)
    result = {"images": len(x), "figure": str(out / "attention.png"), "cls_attention_trained": cls_trained}
    if masks is not None:
        scores = score_maps(maps, masks, valid)
        result.update({k: scores[k] for k in ("jaccard", "jaccard_best_head", "object_mass",
                                              "object_area", "jaccard_centre_prior",
                                              "jaccard_held_out_head", "jaccard_held_out_head_prior",
                                              "held_out_heads")})
        for key in ("per_image", "per_image_best_head", "per_image_centre_prior",
                    "per_image_held_out_head", "per_image_held_out_head_prior"):
            if key in scores:                                    # for standard errors, pairs
                result[key] = [round(v, 4) for v in scores[key]]
        print(f"attention Jaccard (head mean): {scores['jaccard']:.3f}, "
              f"best head: {scores['jaccard_best_head']:.3f} over {len(x)} images; the centre "
              f"prior of the same area: {scores['jaccard_centre_prior']:.3f}")
        if scores["held_out_heads"] is not None:
            print(f"one head picked on the other half of the images (heads "
                  f"{scores['held_out_heads'][0]} and {scores['held_out_heads'][1]}): "
                  f"{scores['jaccard_held_out_head']:.3f}; the centre prior of its area: "
                  f"{scores['jaccard_held_out_head_prior']:.3f}")
        print(f"attention on the object: {scores['object_mass']:.0%} of the head-mean map's mass "
              f"(the object covers {scores['object_area']:.0%} of the image)")
    print(f"figure: {out / 'attention.png'}")
    _emit_json(args, {**result, "precision": _precision_name(args)})


def _pca_view(args, backbone, x, names, out):
    """`attention --pca`: one PCA over the last block's patch tokens of all images, as RGB."""
    from .pca import pca_figure, pca_rgb
    result = pca_rgb(backbone, x, foreground=args.foreground)
    out.mkdir(parents=True, exist_ok=True)
    pca_figure(x, result, names=names).savefig(out / "pca.png", dpi=110)
    shares = ", ".join(f"{e:.0%}" for e in result["explained"])
    print(f"PCA of {len(x)} images' patch features: R, G, B explain {shares} of the variance"
          + (f"; {result['foreground'].float().mean():.0%} of the patches kept as foreground"
             if args.foreground else ""))
    print(f"figure: {out / 'pca.png'}")
    _emit_json(args, {"images": len(x), "figure": str(out / "pca.png"),
                      "explained": result["explained"], "precision": _precision_name(args)})


def _attention_video(args, backbone, size, out):
    """`attention --video`: the maps of a folder of frames, in natural order, as one GIF."""
    from .attention import IMAGE_SUFFIXES, attention_video
    from .data import natural_key
    folder = Path(args.images)
    if args.images == "shapes" or not folder.is_dir():
        raise ValueError(f"--video needs --images to be a folder of frames, got {args.images!r}")
    if args.masks:
        raise ValueError("--video draws the attention maps of frames; it scores no --masks")
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=natural_key)
    if not files:
        raise FileNotFoundError(f"no frames ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    files = files[:args.limit] if args.limit else files
    path = attention_video(backbone, files, size, out / "attention.gif")
    print(f"video: {path} ({len(files)} frames, short side {size}px)")
    _emit_json(args, {"images": len(files), "video": str(path)})


def cmd_smalldata(args):
    from .smalldata import parse_list, run_smalldata
    methods = parse_list(args.methods, str, "methods")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown methods {bad}; choose from {METHODS}")
    if args.data:
        require_labels(args.data, "smalldata (it fine-tunes on the labels)")
    recipe = {"epochs": args.finetune_epochs, "lr": args.finetune_lr,
              "seeds": parse_list(args.finetune_seeds, int, "finetune-seeds")}
    if args.finetune_steps:
        recipe["max_steps"] = args.finetune_steps
    if args.finetune_layer_decay is not None:
        recipe["layer_decay"] = args.finetune_layer_decay
    summary = run_smalldata(args.preset, methods, parse_list(args.fractions, float, "fractions"),
                            args.out, args.steps, recipe, data=args.data,
                            seeds=parse_list(args.seeds, int, "seeds"), sets=args.set,
                            progress=not args.json,
                            tokenizers=parse_list(args.tokenizers, str, "tokenizers") if args.tokenizers else [],
                            tokenizer_fraction=args.tokenizer_fraction,
                            baseline=not args.no_baseline, mim_sets=args.mim_set or None,
                            dino_sets=args.dino_set or None,
                            overwrite=args.overwrite, dry_run=args.dry_run,
                            finished_only=args.finished_only)
    if args.dry_run:
        _emit_json(args, summary)
        return
    print(Path(args.out, "smalldata.md").read_text())
    print(f"result: {Path(args.out, 'smalldata.json')}, {Path(args.out, 'smalldata.md')}; "
          f"fine-tuning curves: {Path(args.out, 'finetune_curves.png')}")
    if args.json:
        keep = ("method", "fraction", "tokenizer", "finetune_top1", "finetune_top1_seeds",
                "finetune_se", "seed_se", "binomial_se", "converged", "knn_top1", "linear_top1",
                "over_random_init", "over_random_init_se", "paired")   # the last three with a baseline
        base = summary["random_init"]
        print(json.dumps({"cells": [{k: c[k] for k in keep if k in c} for c in summary["cells"]],
                          "tokenizer_cells": [{k: c[k] for k in keep if k in c}
                                              for c in summary["tokenizer_cells"]],
                          "drops": summary["drops"], "verdict": summary["verdict"],
                          "precision": summary["precision"], "left_out": summary["left_out"],
                          "random_init": base and {k: base[k] for k in (
                              "finetune_top1", "finetune_top1_seeds", "finetune_se", "converged")}}))


def cmd_ablate(args):
    from .ablate import parse_rows, run_ablation
    rows = parse_rows(args.rows)
    cfg = train_config(args.preset, args.set, data=args.data, minutes=args.minutes,
                       max_steps=args.max_steps, seed=args.seed)
    require_labels(cfg.data, "ablate (its rows are scored by k-NN and a linear probe)")
    out = _out_folder(args.out or f"runs/ablate-{cfg.name}")
    summary = run_ablation(cfg, rows, out, eval_every=args.eval_every, progress=not args.json)
    print((out / "ablation.md").read_text())
    print(f"table: {out / 'ablation.md'} and {out / 'ablation.json'}")
    if args.json:
        keep = ("name", "knn_top1", "linear_top1", "collapsed", "information", "steps")
        print(json.dumps({"rows": [{k: r[k] for k in keep} for r in summary["rows"]],
                          "random_init": summary["random_init"], "data": cfg.data,
                          "table": str(out / "ablation.md")}))


def cmd_estimate(args):
    """How long `make demo` (train, then k-NN and attention of the trained and the random-init
    network) takes on this machine: the training budget plus measured evaluation costs."""
    from .data import build_dataset
    from .evaluate import random_init_backbone
    from .precision import for_config, seconds_per_image
    cfg = make_config(args.preset, sets=args.set)
    precision = for_config(cfg)
    print(precision)
    cfg = cfg.for_precision(precision.bf16)
    # building the datasets draws the embedded shapes once (into their cache), so that the
    # training budget of the run that follows is spent on training
    images = sum(len(build_dataset(cfg.data, train=t, image_size=cfg.image_size)) for t in (True, False))
    per_image = seconds_per_image(random_init_backbone(cfg), cfg.image_size, precision)
    evaluation = 2 * (images + args.attention_images) * per_image + 5 * 4.0   # + 5 process starts
    training = 60 * cfg.minutes if cfg.minutes else float("nan")
    print(f"estimated time on this machine: {(training + evaluation) / 60:.1f} min "
          f"(training {training / 60:.1f} min, its budget; evaluation {evaluation / 60:.1f} min: "
          f"k-NN over {images} images and {args.attention_images} attention maps, trained and "
          f"random init, at {per_image * 1e3:.1f} ms per image)")


def cmd_precision(args):
    """This machine's precision decision for a preset, and the stored timings behind it."""
    from . import precision
    cfg = make_config(args.preset, sets=args.set)
    shape = precision.model_shape(cfg)
    if args.remeasure:
        precision.machine_timings(*shape, remeasure=True)
    chosen = precision.for_config(cfg, "cpu")
    times = precision.machine_timings(*shape)
    print(f"machine: {precision.machine_id()}")
    print(f"{args.preset}: {chosen}")
    print("stored timings (ms, forward + backward): " +
          ", ".join(f"{k} {v * 1e3:.2f}" for k, v in times.items()))
    print(f"stored in {precision.cache_file()}; `--remeasure` measures again (on an idle machine)")
    if args.json:
        print(json.dumps({"machine": precision.machine_id(), **chosen.to_dict(), "timings": times}))


# what `make demo` writes with --json FILE into its run folder, and the command that writes each
DEMO_RESULTS = {"knn.json": "knn --checkpoint RUN/checkpoint.pt",
                "knn-random-init.json": "knn --preset cpu-demo --random-init",
                "attention.json": "attention --checkpoint RUN/checkpoint.pt --images shapes",
                "attention-random-init.json": "attention --preset cpu-demo --random-init --images shapes"}


def summary_lines(run) -> list[str]:
    """The three lines that end `make demo`: k-NN trained vs random init and the gap, the
    attention Jaccard trained vs random init, and where the figures are, read from the JSON
    files of :data:`DEMO_RESULTS` in the run folder ``run``."""
    run = Path(run)
    results = {}
    for name, command in DEMO_RESULTS.items():
        path = run / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: `python -m dino_lite {command} --json "
                                    f"{path}` writes it (make demo runs it)")
        try:
            results[name] = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not a JSON object ({e}); run its command again") from None
    def get(name, key):
        if not isinstance(results[name], dict) or key not in results[name]:
            raise ValueError(f"{run / name} has no {key!r}; was it written by "
                             f"`{DEMO_RESULTS[name]}`?")
        return results[name][key]
    knn, knn0 = get("knn.json", "knn_top1"), get("knn-random-init.json", "knn_top1")
    jac, jac0 = get("attention.json", "jaccard"), get("attention-random-init.json", "jaccard")
    return [f"k-NN top-1: {knn:.1%} trained vs {knn0:.1%} random init, a gap of "
            f"{(knn - knn0) * 100:+.1f} points",
            f"attention Jaccard: {jac:.2f} trained vs {jac0:.2f} random init",
            f"figures: {get('attention.json', 'figure')} and "
            f"{get('attention-random-init.json', 'figure')}"]


def cmd_summary(args):
    print("\n".join(summary_lines(args.run)))


def cmd_config(args):
    cfg = make_config(args.preset, sets=args.set)
    print(json.dumps(cfg.to_dict()) if args.json else cfg.to_json())


def cmd_data(args):
    from .download import download, locations
    if args.action == "list":
        for d in locations():
            where = d["found"] or "not found (looked in " + ", ".join(map(str, d["searched"])) + ")"
            print(f"{d['name']:20s} {where}\n{'':20s} {d['about']}")
        print("get a missing one with: python -m dino_lite data download NAME")
    else:
        if not args.name:
            raise ValueError("data download needs a NAME: tinyimagenet-dev20, pets-mini or davis-dev")
        download(args.name, args.root, progress=not args.no_progress, keep_archives=args.keep_archives)


def build_parser():
    p = argparse.ArgumentParser(prog="python -m dino_lite", description=__doc__)
    p.add_argument("--local-rank", "--local_rank", type=int, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train DINO, BEiT, SplitMask or MAE")
    t.add_argument("--preset", default="cpu-demo", choices=sorted(PRESETS))
    t.add_argument("--method", choices=METHODS,
                   help="dino (default), or a masked image model: beit, splitmask, mae (the preset gives "
                        "data, backbone, crop size and budget; the method its objective and optimiser)")
    t.add_argument("--data", help="shapes, a folder with train/ and val/, or cifar10/stl10/imagenette")
    budget = t.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=positive_float,
                        help="time budget; schedules fit the steps that fit")
    budget.add_argument("--epochs", type=positive_int)
    t.add_argument("--max-steps", type=positive_int)
    t.add_argument("--out", help="run directory (default runs/PRESET)")
    t.add_argument("--seed", type=non_negative_int)
    t.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoint.pt, with the same options (a larger "
                        "--max-steps or --epochs extends the run)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    t.set_defaults(func=cmd_train)

    k = sub.add_parser("knn", help="weighted k-NN top-1 of frozen features")
    _add_model_source(k).add_argument(
        "--features", help="an `embed` output (TRAIN.npy and its .csv): k-NN from files, the "
                           "labels from the csv's class column; with --test-features")
    k.add_argument("--test-features", help="the test images' `embed` output (with --features)")
    k.add_argument("--data", help="dataset spec (default: the one the model was trained on)")
    k.add_argument("--k", type=positive_int, default=20)
    k.add_argument("--temperature", type=positive_float, default=0.07)
    k.set_defaults(func=cmd_knn)

    lin = sub.add_parser("linear", help="linear probe on frozen features (CLS + mean patch token)")
    _add_model_source(lin)
    lin.add_argument("--data", help="dataset spec (default: the one the model was trained on)")
    lin.add_argument("--epochs", type=positive_int, default=100)
    lin.add_argument("--lr", type=positive_float, default=0.1, help="SGD lr on standardised features")
    lin.set_defaults(func=cmd_linear)

    f = sub.add_parser("finetune", help="backbone + new linear head trained end to end")
    _add_model_source(f)
    f.add_argument("--data", help="labelled dataset spec (default: the one the model was trained on)")
    f.add_argument("--epochs", type=positive_int, default=30)
    f.add_argument("--max-steps", type=positive_int, help="stop after this many steps")
    f.add_argument("--lr", type=positive_float, default=1e-3,
                   help="AdamW peak lr at batch 256 (scaled linearly), warm-up then cosine")
    f.add_argument("--batch-size", type=positive_int, default=64)
    f.add_argument("--warmup-epochs", type=non_negative_float, default=3)
    f.add_argument("--layer-decay", type=unit_interval,
                   help="layer-wise lr decay of a ViT's blocks (default: 0.75 for a checkpoint, "
                        "1 = none for --random-init)")
    f.add_argument("--drop-path", type=non_negative_float, default=0.1)
    f.add_argument("--label-smoothing", type=non_negative_float, default=0.1)
    f.add_argument("--seed", type=non_negative_int, default=0,
                   help="the fine-tuning's seed: the new head, the image order and augmentations "
                        "(a random init's weights follow the config's seed, --set seed=N)")
    f.add_argument("--curve", help="write the held-out top-1 per epoch as a figure (PNG path)")
    f.set_defaults(func=cmd_finetune)

    em = sub.add_parser("embed", help="features of every image under a folder -> OUT.npy + OUT.csv")
    _add_model_source(em)
    em.add_argument("--images", required=True, help="a folder of images (any depth; class "
                                                    "subfolders give the csv's class column)")
    em.add_argument("--out", required=True, help="writes OUT.npy (features) and OUT.csv (index, "
                                                 "path, class), row for row")
    em.add_argument("--pool", choices=("cls", "mean", "patch", "cls_gem"), default="cls",
                    help="cls: the CLS token (as k-NN), [N, D]; mean: the mean patch token, "
                         "[N, D]; patch: every patch token, [N, tokens, D]; cls_gem: CLS and "
                         "GeM-pooled patch tokens, [N, 2D] (copydetect's descriptor)")
    em.add_argument("--image-size", type=positive_int, help="px (default: the model's)")
    em.add_argument("--batch-size", type=positive_int, default=64)
    em.add_argument("--num-workers", type=int, default=0, help="image-loading processes")
    em.set_defaults(func=cmd_embed)

    a = sub.add_parser("attention", help="last-block attention maps, masks and Jaccard")
    _add_model_source(a)
    a.add_argument("--images", required=True, help="a folder of images, or 'shapes'")
    a.add_argument("--masks", help="folder of PNG masks named like the images")
    a.add_argument("--mask-format", choices=["binary", "trimap"], default="binary",
                   help="binary: nonzero = object; trimap (Oxford-IIIT Pet): 1 = object, 3 ignored")
    a.add_argument("--image-size", type=positive_int)
    a.add_argument("--limit", type=positive_int, help="use at most this many images")
    a.add_argument("--out", default="runs/attention")
    a.add_argument("--video", action="store_true",
                   help="--images is a folder of video frames: write the last block's head-mean "
                        "maps over the frames (short side --image-size) as OUT/attention.gif")
    a.add_argument("--pca", action="store_true",
                   help="instead of attention maps: the first three principal components of the "
                        "last block's patch tokens (one PCA over all images) as RGB, OUT/pca.png")
    a.add_argument("--foreground", action="store_true",
                   help="with --pca: drop the background (the smaller side of the first "
                        "component is the object) and colour the object by a second PCA")
    a.set_defaults(func=cmd_attention)

    ab = sub.add_parser("ablate", help="the paper's ablation rows, same seed and budget each")
    ab.add_argument("--rows", default="all", help="'all' or comma-separated row names (see README)")
    ab.add_argument("--preset", default="cpu-demo", choices=sorted(PRESETS), help="the base recipe")
    ab.add_argument("--data", help="dataset spec (default: the preset's)")
    ab_budget = ab.add_mutually_exclusive_group(required=True)
    ab_budget.add_argument("--minutes", type=positive_float, help="time budget per row")
    ab_budget.add_argument("--max-steps", type=positive_int, help="steps per row (deterministic)")
    ab.add_argument("--eval-every", type=positive_int,
                    help="also record the teacher's k-NN every N steps")
    ab.add_argument("--seed", type=non_negative_int)
    ab.add_argument("--out", help="output directory (default runs/ablate-PRESET)")
    ab.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ab.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ab.set_defaults(func=cmd_ablate)

    e = sub.add_parser("estimate", help="how long `make demo` takes on this machine, and in which precision")
    e.add_argument("--preset", default="cpu-demo", choices=sorted(PRESETS))
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    e.add_argument("--attention-images", type=non_negative_int, default=200)
    e.set_defaults(func=cmd_estimate)

    pr = sub.add_parser("precision", help="this machine's bf16/fp32 decision and the timings stored for it")
    pr.add_argument("--preset", default="cpu-demo", choices=sorted(PRESETS))
    pr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    pr.add_argument("--remeasure", action="store_true",
                    help="time the attention kernels (and bf16 where the instruction set is unknown) again")
    pr.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    pr.set_defaults(func=cmd_precision)

    sd = sub.add_parser("smalldata", help="pre-train each method on fractions of the data, then fine-tune")
    sd.add_argument("--preset", default="tinyimagenet", choices=sorted(PRESETS))
    sd.add_argument("--data", help="dataset spec (default: the preset's)")
    sd.add_argument("--fractions", default="0.1,1", help="comma-separated shares of the training images")
    sd.add_argument("--methods", default="dino,beit,splitmask")
    sd.add_argument("--steps", type=positive_int,
                    help="pre-training steps, the same for every cell (default: smalldata.STEPS, "
                    "8000, the shortest length measured at which DINO fine-tunes clearly above "
                    "random init)")
    sd.add_argument("--seeds", default="0,1", help="comma-separated pre-training seeds, each cell once "
                    "per seed (default: smalldata.SEEDS, 0,1, the two the decisive comparison needs)")
    sd.add_argument("--finetune-epochs", type=positive_int, default=30)
    sd.add_argument("--finetune-steps", type=positive_int, help="cut each fine-tuning at this many steps")
    sd.add_argument("--finetune-lr", type=positive_float, default=1e-3,
                    help="fine-tuning peak lr per 256 images (warm-up, then cosine)")
    sd.add_argument("--finetune-layer-decay", type=unit_interval,
                    help="layer-wise lr decay when fine-tuning pre-trained encoders (default 1: "
                    "none, as measured; BEiT's 0.75 for example; random init never decays)")
    sd.add_argument("--finetune-seeds", default="0,1",
                    help="comma-separated seeds: each encoder is fine-tuned once per seed, the mean "
                    "reported (default: smalldata.FINETUNE's, 0,1)")
    sd.add_argument("--tokenizers", help="comma-separated tokenizers for the BEiT tokenizer comparison "
                    "(random_projection, random_patches, kmeans); default: none")
    sd.add_argument("--tokenizer-fraction", type=unit_interval,
                    help="fraction of the images for the tokenizer comparison (default: the last)")
    sd.add_argument("--mim-set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for the BEiT and SplitMask cells only (default: "
                    "smalldata.MIM_SETS, their study learning rate lr=0.0015; any --mim-set replaces it)")
    sd.add_argument("--dino-set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for the DINO cells only (default: smalldata.DINO_SETS, "
                    "the paper's DINO: koleo=0 ibot=0, after --set and whatever the preset adds; any "
                    "--dino-set replaces it)")
    sd.add_argument("--no-baseline", action="store_true",
                    help="skip the random-init baseline (to run the cells one at a time)")
    sd.add_argument("--overwrite", action="store_true",
                    help="replace cells whose folder holds a pre-training of other settings")
    only = sd.add_mutually_exclusive_group()
    only.add_argument("--dry-run", action="store_true",
                      help="print the cells and the compute they need on this machine (timed), then stop")
    only.add_argument("--finished-only", action="store_true",
                      help="train nothing: the table, drops and verdict of the cells already "
                      "pre-trained and scored (a study still running or cut short); the others "
                      "are named as left out")
    sd.add_argument("--out", default="runs/smalldata")
    sd.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    sd.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    sd.set_defaults(func=cmd_smalldata)

    dt = sub.add_parser("data", help="list where the photo data sets are found, or download one")
    dt.add_argument("action", choices=("list", "download"))
    dt.add_argument("name", nargs="?", help="tinyimagenet-dev20 (tinyimagenet), pets-mini (pets) "
                                            "or davis-dev (davis)")
    dt.add_argument("--root", help="folder to build NAME in (default: $DINO_LITE_DATA, else data/)")
    dt.add_argument("--keep-archives", action="store_true", help="keep the downloaded archives")
    dt.add_argument("--no-progress", action="store_true", help="no progress bar")
    dt.set_defaults(func=cmd_data)

    su = sub.add_parser("summary", help="make demo's last three lines, from its run folder's JSON")
    su.add_argument("--run", default="runs/demo", help="the folder make demo wrote (default runs/demo)")
    su.set_defaults(func=cmd_summary)

    c = sub.add_parser("config", help="print the resolved configuration")
    c.add_argument("--preset", default="cpu-demo", choices=sorted(PRESETS))
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_config)
    _add_emerging_commands(sub)
    return p

# --- Emerging properties beyond k-NN: retrieval, copy detection, video segmentation ------------

def _add_feature_source(p, baseline, baseline_help, required=True):
    """Like _add_model_source, plus a model-free baseline flag (``--pixels``, ...)."""
    src = p.add_mutually_exclusive_group(required=required)
    src.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    src.add_argument("--preset", choices=sorted(PRESETS), help="with --random-init: an untrained network")
    src.add_argument(baseline, action="store_true", help=baseline_help)
    p.add_argument("--random-init", action="store_true", help="evaluate a randomly initialised backbone")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def _feature_backbone(args, baseline):
    args.model = ("baseline: " + baseline) if getattr(args, baseline) else \
        args.checkpoint or f"{args.preset} (random init)"
    if getattr(args, baseline):
        args.rank, args.precision = 0, None
        return None, None
    return _backbone(args)


def _precision_name(args):
    """The evaluation precision for ``--json`` (None for the model-free baselines)."""
    return args.precision.name if getattr(args, "precision", None) else None


def _from_embed_files(args) -> bool:
    """True when ``--queries`` and ``--database`` name ``embed`` outputs (``.npy``) rather than
    folders: the features are then read, not computed, and the options that compute them are
    refused by name."""
    files = [Path(p).suffix == ".npy" for p in (args.queries, args.database)]
    if not any(files):
        if not (args.checkpoint or args.preset or args.pixels):
            raise ValueError("one of --checkpoint, --preset (with --random-init) or --pixels is "
                             "required (or give --queries and --database as embed outputs, .npy)")
        return False
    if not all(files):
        raise ValueError("--queries and --database are both folders of images or both embed "
                         "outputs (.npy), not one of each")
    given = [flag for flag, on in (("--checkpoint", args.checkpoint), ("--preset", args.preset),
                                    ("--pixels", args.pixels), ("--random-init", args.random_init),
                                    ("--set", args.set), ("--image-size", args.image_size),
                                    ("--per-class", args.per_class),
                                    ("--multiscale", getattr(args, "multiscale", False)))
             if on]
    if given:
        raise ValueError(f"--queries and --database are embed outputs, so the features are "
                         f"read, not computed: {', '.join(given)} do not apply")
    if getattr(args, "whitening", None) and Path(args.whitening).suffix != ".npy":
        raise ValueError("with embed outputs, --whitening is an embed output too (.npy)")
    args.model, args.precision, args.rank = f"features {args.queries}", None, 0
    return True


def _rank_files(args, figure, extra):
    """retrieval / copydetect on two ``embed`` outputs (copydetect: whitened on a third)."""
    import numpy as np
    import torch.nn.functional as F
    from .copydetect import Whitening
    from .embed import ranking_from_files, read_embeddings
    qfeat, dfeat, qn, dn, pos, junk = ranking_from_files(args.queries, args.database,
                                                         args.ground_truth)
    if getattr(args, "whitening", None):
        feats = read_embeddings(args.whitening)[0]
        if feats.ndim != 2 or feats.shape[1] != qfeat.shape[1]:
            raise ValueError(f"--whitening {args.whitening} holds {list(feats.shape)} features; "
                             f"the queries are [N, {qfeat.shape[1]}]")
        try:
            whiten = Whitening(F.normalize(torch.from_numpy(np.array(feats, np.float32)), dim=-1))
        except ValueError as err:
            raise ValueError(f"--whitening {args.whitening}: {err}") from None
        qfeat, dfeat = whiten(qfeat), whiten(dfeat)
    _rank_and_report(args, qn, dn, qfeat, dfeat, pos, junk, figure, extra, images=False)


def _ranking_images(args):
    """Query and database files, names relative to their folders, and relevance (positive, junk)."""
    from .retrieval import list_images, read_ground_truth, relevance_from_classes, relative_names
    (qf, qc), (df, dc) = list_images(args.queries), list_images(args.database)
    if args.per_class is not None:
        if qc is None or dc is None:
            raise ValueError("--per-class needs class subfolders in --queries and --database")
        qf, qc = _first_per_class(qf, qc, args.per_class)
        df, dc = _first_per_class(df, dc, args.per_class)
    if args.ground_truth:
        pos, junk = read_ground_truth(args.ground_truth, relative_names(qf, args.queries),
                                      relative_names(df, args.database))
    elif qc is None or dc is None:
        plain = [f"{folder} holds {sum(Path(f).parent == Path(folder) for f in files)} images "
                 "directly" for folder, files, classes in ((args.queries, qf, qc),
                                                           (args.database, df, dc)) if classes is None]
        raise ValueError("without --ground-truth, --queries and --database must each hold one "
                         f"subfolder per class and nothing else ({'; '.join(plain)})")
    else:
        pos, junk = relevance_from_classes(qc, dc), None
    return qf, df, pos, junk


def _first_per_class(files, classes, n):
    seen, keep = {}, []
    for i, c in enumerate(classes):
        seen[c] = seen.get(c, 0) + 1
        if seen[c] <= n:
            keep.append(i)
    return [files[i] for i in keep], [classes[i] for i in keep]


def _rank_and_report(args, qf, df, qfeat, dfeat, pos, junk, figure, extra, images=True):
    """Rank, score, print; the figure of the top matches when the images are at hand."""
    from .retrieval import rank_database, retrieval_figure, score_rankings
    _, order = rank_database(qfeat, dfeat)
    scores = score_rankings(order, pos, junk, ks=(1, 5, 10))
    ap = torch.tensor(scores.pop("ap"))
    shown = None
    if images:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        rows = ap.nan_to_num(2.0).argsort()[:4].tolist() if args.command == "copydetect" else None
        shown = out / figure
        retrieval_figure(qf, df, order[:, :10], pos, queries=rows, junk=junk).savefig(shown, dpi=110)
    print(f"{args.command} ({args.model}): mAP {scores['mAP']:.3f} over {scores['queries']} queries, "
          f"{len(df)} database images; precision@1 {scores['precision@1']:.3f}, "
          f"recall@10 {scores['recall@10']:.3f}; "
          + (f"figure {shown}" if shown else "no figure (features read from files)"))
    if args.json:
        print(json.dumps({**scores, "database": len(df), "model": args.model, **extra,
                          "figure": str(shown) if shown else None,
                          "precision": _precision_name(args)}))


def _image_size(args, backbone, cfg) -> int:
    """``--image-size`` (else the model's), refused where the model cannot take it or ignores it."""
    if backbone is None:
        if args.image_size is not None:
            raise ValueError("--image-size has no effect with --pixels (its thumbnails are 16 x 16 px)")
        return 0
    size = args.image_size or cfg.image_size
    if cfg.arch.startswith("vit") and size % cfg.patch_size:
        raise ValueError(f"--image-size {size} is not a multiple of the model's patch size "
                         f"{cfg.patch_size}")
    return size


def cmd_retrieval(args):
    from .retrieval import MULTISCALE, embed_images, pixel_features
    if _from_embed_files(args):
        return _rank_files(args, "retrieval.png", {"multiscale": False})
    backbone, cfg = _feature_backbone(args, "pixels")
    size = _image_size(args, backbone, cfg)
    qf, df, pos, junk = _ranking_images(args)
    if backbone is None:
        qfeat, dfeat = pixel_features(qf), pixel_features(df)
    else:
        scales = MULTISCALE if args.multiscale else (1.0,)
        qfeat, dfeat = (embed_images(backbone, f, size, scales, precision=args.precision)
                        for f in (qf, df))
    _rank_and_report(args, qf, df, qfeat, dfeat, pos, junk, "retrieval.png",
                     {"multiscale": args.multiscale})


def cmd_copydetect(args):
    from .copydetect import Whitening, cls_gem_features
    from .retrieval import embed_images, list_images, pixel_features
    if _from_embed_files(args):
        return _rank_files(args, "copydetect.png", {"whitening": args.whitening})
    backbone, cfg = _feature_backbone(args, "pixels")
    size = _image_size(args, backbone, cfg)
    qf, df, pos, junk = _ranking_images(args)
    if backbone is None:
        embed = pixel_features
    else:
        embed = lambda files: embed_images(backbone, files, size, features=cls_gem_features,
                                           precision=args.precision)
    qfeat, dfeat = embed(qf), embed(df)
    if args.whitening:
        files = list_images(args.whitening)[0]
        try:
            whiten = Whitening(embed(files))
        except ValueError as err:
            raise ValueError(f"--whitening {args.whitening} ({len(files)} images): {err}") from None
        qfeat, dfeat = whiten(qfeat), whiten(dfeat)
    _rank_and_report(args, qf, df, qfeat, dfeat, pos, junk, "copydetect.png",
                     {"whitening": args.whitening})


def cmd_make_copies(args):
    from .copydetect import make_copies
    info = make_copies(args.images, args.out, seed=args.seed, originals=args.originals,
                       copies=args.copies, distractors=args.distractors, whitening=args.whitening_images)
    print(f"{info['queries']} queries, {info['database']} database images ({info['distractors']} "
          f"distractors), {info['whitening']} whitening images in {info['out']}; "
          f"ground truth {info['ground_truth']}")
    if args.json:
        print(json.dumps(info))


def cmd_vos(args):
    from .vos import evaluate_davis
    backbone, _ = _feature_backbone(args, "first_frame_baseline")
    seqs = [s for s in args.sequences.split(",") if s] if args.sequences else None
    video = _out_folder(args.out or "runs/vos") if args.video else None
    r = evaluate_davis(args.davis, backbone, seqs, args.out, short_side=args.short_side,
                       n_context=args.n_context, radius=args.radius, topk=args.topk,
                       temperature=args.temperature, video=video)
    skipped = "; ".join(f"{k} ({v})" for k, v in r["not_scored"].items())
    if r["sequences_scored"]:
        print(f"vos ({args.model}): J {r['J']:.3f}  F {r['F']:.3f}  J&F {r['JF']:.3f} over "
              f"{r['sequences_scored']} sequence{'s' * (r['sequences_scored'] != 1)} "
              f"({r['objects']} objects)"
              + (f"; {len(r['not_scored'])} not scored: {skipped}" if skipped else "")
              + (f"; {r['frames_per_s']:.2f} frames/s" if r["frames_per_s"] else "")
              + f" at short side {args.short_side}px; peak memory {r['peak_memory_mb']:.0f} MB")
    else:
        print(f"vos ({args.model}): no sequence could be scored: {skipped}")
    for s in r["sequences"]:
        if s["video"]:
            print(f"video: {s['video']}")
    if args.json:
        summary = {k: r[k] for k in ("J", "F", "JF", "sequences_scored", "objects", "not_scored",
                                     "frames", "frames_per_s", "peak_memory_mb")}
        print(json.dumps(summary | {"short_side": args.short_side, "model": args.model, "out": args.out,
                                    "precision": _precision_name(args),
                                    "per_sequence": {s["sequence"]: {"J": s["J"], "F": s["F"]}
                                                     for s in r["sequences"]},
                                    "videos": [s["video"] for s in r["sequences"] if s["video"]]},
                         allow_nan=False))


def _add_emerging_commands(sub):
    for name, helptext in (("retrieval", "image retrieval with frozen CLS features: mAP, P@k, R@k"),
                           ("copydetect", "copy detection: CLS + GeM patch features, whitening, mAP")):
        r = sub.add_parser(name, help=helptext)
        _add_feature_source(r, "--pixels", "baseline: raw-pixel thumbnails instead of a network",
                            required=False)
        r.add_argument("--database", required=True,
                       help="folder of images (or class subfolders), or an embed output (.npy)")
        r.add_argument("--queries", required=True,
                       help="folder of images (or class subfolders), or an embed output (.npy)")
        r.add_argument("--ground-truth", required=name == "copydetect",
                       help="CSV 'query,match[,kind]' (kind: positive or junk)")
        r.add_argument("--image-size", type=positive_int,
                       help="short side in px, a multiple of the patch size (default: the model's)")
        r.add_argument("--per-class", type=positive_int,
                       help="use the first N images of each class only (class subfolders)")
        r.add_argument("--out", default=f"runs/{name}", help="folder for the figure")
        if name == "retrieval":
            r.add_argument("--multiscale", action="store_true", help="average scales 1, 1/sqrt2, 1/2")
        else:
            r.add_argument("--whitening", help="folder of images to learn PCA whitening on (an "
                                               "embed output with .npy queries)")
        r.set_defaults(func=cmd_retrieval if name == "retrieval" else cmd_copydetect)

    m = sub.add_parser("make-copies", help="build a copy-detection benchmark from an image folder")
    m.add_argument("--images", required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--seed", type=non_negative_int, default=0)
    m.add_argument("--originals", type=positive_int, default=50)
    m.add_argument("--copies", type=positive_int, default=2, help="edited copies per original")
    m.add_argument("--distractors", type=non_negative_int, default=150)
    m.add_argument("--whitening-images", type=non_negative_int, default=100)
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_make_copies)

    v = sub.add_parser("vos", help="DAVIS video object segmentation by label propagation")
    _add_feature_source(v, "--first-frame-baseline", "baseline: repeat the first frame's mask")
    v.add_argument("--davis", required=True, help="DAVIS folder (JPEGImages/, Annotations/)")
    v.add_argument("--sequences", help="comma-separated names (default: all)")
    v.add_argument("--out", help="write each frame's mask and overlay here")
    v.add_argument("--video", action="store_true",
                   help="write each sequence's propagated masks as an animated GIF "
                        "OUT/<sequence>.gif (OUT: --out, default runs/vos)")
    v.add_argument("--short-side", type=positive_int, default=480,
                   help="frames resized to this short side (px)")
    v.add_argument("--n-context", type=non_negative_int, default=7,
                   help="previous predicted frames used besides the first (0: the first only)")
    v.add_argument("--radius", type=non_negative_int, default=12,
                   help="local window radius in patches (0: the same position only)")
    v.add_argument("--topk", type=positive_int, default=5, help="source patches kept per patch")
    v.add_argument("--temperature", type=positive_float, default=0.1,
                   help="softmax temperature of the affinities")
    v.set_defaults(func=cmd_vos)


def main(argv=None):
    """Run a command. Bad input (:func:`user_errors`) ends with one ``error: ...`` line and exit
    code 2, Ctrl-C with exit code 130 and, during training, SIGTERM with 143 (128 + the signal
    number, as the shell reports a process the signal killed; training saves its checkpoint
    first and says so); other exceptions are bugs and keep their traceback."""
    args = build_parser().parse_args(argv)
    if args.local_rank is not None:          # torch.distributed.launch style; torchrun sets the env
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    try:
        args.func(args)
        _leave_process_group(wait=True)
    except Exception as e:
        if not isinstance(e, user_errors()):
            raise
        print(f"error: {e}", file=sys.stderr)
        _leave_process_group(wait=False)
        sys.exit(2)
    except KeyboardInterrupt as stop:
        from .train import Terminated
        if args.command == "smalldata":
            print("interrupted: run the same command again to go on (finished cells are kept)",
                  file=sys.stderr)
        elif args.command != "train":          # `train` has printed where it stopped
            print("interrupted", file=sys.stderr)
        _leave_process_group(wait=False)
        sys.exit(143 if isinstance(stop, Terminated) else 130)


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
