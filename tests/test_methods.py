"""methods.py: a masked method trains through the one loop, resumes exactly, round-trips its
checkpoint (tokenizer included), and fits a data-driven tokenizer on the run's own images."""


import pytest
import torch

from conftest import tiny_config, train_resume_and_knn
from dino_lite.checkpoint import backbone_from_checkpoint, load_checkpoint
from dino_lite.config import make_config
from dino_lite.methods import build_method


@pytest.mark.parametrize("method,tokenizer", [("beit", "random_projection"), ("splitmask", "kmeans")])
def test_masked_method_trains_resumes_exactly_and_its_checkpoint_round_trips(
        method, tokenizer, tiny_folder, tmp_path, capsys):
    extra = (f"tokenizer={tokenizer}", "tokenizer_images=8")
    path, _ = train_resume_and_knn(method, tiny_folder, tmp_path, capsys, *extra)
    # the checkpoint is plain data, holds the tokenizer, and rebuilds the model exactly
    ckpt = load_checkpoint(path)
    assert "tokenizer.codebook" in ckpt["student"] and ckpt["config"]["method"] == method
    rebuilt = build_method(make_config("cpu-demo", {**ckpt["config"], "seed": 7}))
    assert not torch.equal(rebuilt.tokenizer.codebook, ckpt["student"]["tokenizer.codebook"])
    rebuilt.load_state_dict(ckpt["student"])
    for key, value in rebuilt.state_dict().items():
        assert torch.equal(value, ckpt["student"][key]), key
    # evaluation commands find the encoder
    backbone, loaded = backbone_from_checkpoint(path)
    assert loaded.method == method
    assert torch.equal(backbone.state_dict()["pos_embed"], ckpt["teacher"]["backbone.pos_embed"])


def test_data_driven_tokenizers_are_fitted_on_the_cells_subset(tiny_folder, monkeypatch):
    """With data_fraction < 1 the tokenizer sees only the images the run pre-trains on."""
    import dino_lite.methods as methods
    from dino_lite.data import build_dataset
    from dino_lite.train import subset_indices
    seen = {}

    def spy(kind, vocab_size, patch_size, seed, dataset, n_images):
        seen["dataset"] = dataset
        return build_tokenizer(kind, vocab_size, patch_size, seed, dataset, n_images)

    from dino_lite.tokenizers import build_tokenizer
    monkeypatch.setattr(methods, "build_tokenizer", spy)
    cfg = tiny_config(tiny_folder, method="beit", tokenizer="random_patches", vocab_size=16,
                      data_fraction=0.25)
    methods.build_tokenizer_for(cfg)
    full = build_dataset(cfg.data, train=True, image_size=cfg.image_size)
    keep = subset_indices(len(full), 0.25, cfg.seed)
    assert len(seen["dataset"]) == len(keep) == 24
    # the same images as the trainer's subset, in the same order
    assert [seen["dataset"].dataset.samples[i] for i in seen["dataset"].indices] == \
        [full.samples[i] for i in keep]
    cfg = tiny_config(tiny_folder, method="beit", tokenizer="random_patches", vocab_size=16)
    methods.build_tokenizer_for(cfg)
    assert len(seen["dataset"]) == len(full) == 96


def test_the_registry_builds_each_method_and_refuses_an_unknown_name(tiny_folder):
    from dino_lite.methods import build_networks, get_method
    with pytest.raises(ValueError, match=r"\('dino', 'beit', 'splitmask', 'mae'\), got 'byol'"):
        get_method("byol")
    student, teacher = build_networks(tiny_config(tiny_folder))
    assert student is not teacher and type(build_method(tiny_config(tiny_folder))).__name__ == \
        "MultiCropWrapper"                      # DINO: a student and its EMA teacher
    for method, kind in (("beit", "BEiT"), ("splitmask", "SplitMask")):
        student, teacher = build_networks(tiny_config(tiny_folder, method=method, vocab_size=16))
        assert student is teacher and type(student).__name__ == kind


def test_a_fitted_tokenizer_reads_the_trainers_images_without_building_them_again(
        tiny_folder, tmp_path, monkeypatch):
    import dino_lite.methods as methods
    import dino_lite.train as tr
    calls = []

    def counting(*args, **kwargs):
        calls.append(args)
        return build_dataset(*args, **kwargs)
    from dino_lite.data import build_dataset
    monkeypatch.setattr(tr, "build_dataset", counting)
    monkeypatch.setattr(methods, "build_dataset", counting)
    seen = {}

    def spy(kind, vocab_size, patch_size, seed, dataset, n_images):
        seen["images"] = [dataset[i][0] for i in range(len(dataset))]
        return build_tokenizer(kind, vocab_size, patch_size, seed, dataset, n_images)
    from dino_lite.tokenizers import build_tokenizer
    monkeypatch.setattr(methods, "build_tokenizer", spy)
    cfg = tiny_config(tiny_folder, method="beit", tokenizer="random_patches", vocab_size=16,
                      data_fraction=0.25, max_steps=1, bf16=False)
    tr.Trainer(cfg, tmp_path, progress=False)
    assert len(calls) == 1
    # the images the tokenizer read: the run's subset at the global crop size, as built alone
    methods.build_tokenizer_for(cfg)
    alone = seen["images"]
    assert len(calls) == 2 and len(alone) == 24
    tr.Trainer(cfg, tmp_path / "b", progress=False)
    assert all(torch.equal(a, b) for a, b in zip(alone, seen["images"], strict=True))


@pytest.mark.parametrize("method", ["dino", "beit", "splitmask", "mae"])
def test_trains_cls_attention_says_whether_the_loss_reaches_the_last_cls_token(method, tiny_folder):
    """``Method.trains_cls_attention`` is what the attention command warns by: the gradient of
    the method's loss at the last block's CLS output (the only thing that block's CLS attention
    feeds) is nonzero for DINO and exactly zero for the masked image models."""
    from dino_lite.methods import get_method
    cfg = tiny_config(tiny_folder, method=method, n_local=0, vocab_size=32, bf16=False)
    torch.manual_seed(0)
    model = build_method(cfg, fused_attention=False)
    backbone = model.backbone
    outputs = []

    def keep(module, inputs, out):
        out.retain_grad()
        outputs.append(out)
    backbone.blocks[-1].register_forward_hook(keep)
    images = torch.randn(4, 3, 32, 32)
    if method == "dino":
        loss = sum(o.logsumexp(-1).sum() for o in model([images, images.flip(-1)]).output)
    else:
        loss = model(images, *model.draw_masks(torch.Generator().manual_seed(0), 4))[0]
    loss.backward()
    prefix = backbone.num_prefix_tokens
    at_cls = max(o.grad[:, :prefix].abs().max().item() for o in outputs)
    at_patches = max(o.grad[:, prefix:].abs().max().item() for o in outputs)
    assert at_patches > 0 or method == "dino", method
    if get_method(method).trains_cls_attention:
        assert at_cls > 0, method
    else:
        assert at_cls == 0, (method, at_cls)
    assert get_method(method).trains_cls_attention == (method == "dino")
