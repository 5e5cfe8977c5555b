"""config.py: the shared data root of the presets, train_config (the config `train` runs), and
the masked methods' defaults on every preset."""

import ast
from pathlib import Path

import pytest

from dino_lite import config
from dino_lite.config import (METHOD_DEFAULTS, PRESETS, SHARED_DATA_ENV, make_config, resolve_data,
                              shared_data_root, train_config)

PACKAGE = Path(config.__file__).resolve().parent


def test_shared_data_root_defaults_to_shared_data_beside_the_repository(monkeypatch, tmp_path):
    monkeypatch.delenv(SHARED_DATA_ENV, raising=False)
    monkeypatch.chdir(tmp_path)                 # not the working directory: the package's location
    assert shared_data_root() == PACKAGE.parent.parent / "shared" / "data"
    cfg = make_config("tinyimagenet")
    assert cfg.data == str(PACKAGE.parent.parent / "shared" / "data" / "tinyimagenet-dev20")


def test_shared_data_root_follows_the_environment_variable(monkeypatch, tmp_path):
    monkeypatch.setenv(SHARED_DATA_ENV, str(tmp_path))
    assert shared_data_root() == tmp_path
    assert make_config("tinyimagenet").data == str(tmp_path / "tinyimagenet-dev20")
    assert resolve_data("shared:pets-mini") == str(tmp_path / "pets-mini")
    # --data and --set data=... may name a shared data set too, and other specs pass unchanged
    assert train_config("cpu-demo", data="shared:x").data == str(tmp_path / "x")
    assert make_config("cpu-demo", sets=["data=shared:y"]).data == str(tmp_path / "y")
    for spec in ("shapes", "cifar10", "/datasets/imagenet", "../relative/folder"):
        assert resolve_data(spec) == spec


def test_no_preset_holds_a_machine_path(monkeypatch):
    monkeypatch.delenv(SHARED_DATA_ENV, raising=False)
    for name, values in config.PRESETS.items():
        data = values.get("data", "shapes")
        assert data.startswith(config.SHARED) or "/" not in data, (name, data)


def test_train_config_applies_the_given_options_then_sets():
    cfg = train_config("cpu-demo", ["seed=5", "lr=0.001"], data="shapes", seed=3, epochs=None)
    assert cfg.seed == 5 and cfg.lr == 0.001          # --set wins over the options
    assert cfg.minutes == make_config("cpu-demo").minutes == 4   # no length asked: the budget stays
    assert train_config("cpu-demo", seed=3).seed == 3


@pytest.mark.parametrize("given", [dict(max_steps=10), dict(epochs=2)])
def test_train_config_asking_for_a_length_drops_the_preset_budget(given):
    cfg = train_config("cpu-demo", **given)
    assert cfg.minutes is None
    assert (cfg.max_steps, cfg.epochs)[0 if "max_steps" in given else 1] == list(given.values())[0]
    both = train_config("cpu-demo", minutes=2.0, **given)     # an explicit budget is kept
    assert both.minutes == 2.0


def test_library_modules_do_not_import_the_command_line():
    """Layers point one way: no library module takes anything from cli.py. The one exception is
    the SLURM job in launch.py, whose task *is* a run of the command line (``cli.main``)."""
    for path in PACKAGE.glob("*.py"):
        if path.name in ("cli.py", "__main__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[-1] == "cli":
                names = [a.name for a in node.names]
                assert (path.name, names) == ("launch.py", ["main"]), f"{path.name} imports {names} from cli"
            if isinstance(node, ast.Import):
                assert all(a.name.split(".")[-1] != "cli" for a in node.names), path.name


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("method", ["beit", "splitmask"])
def test_every_vit_preset_takes_a_masked_method_with_beits_optimiser(preset, method):
    if PRESETS[preset].get("arch", "vit_tiny").startswith("resnet"):
        with pytest.raises(ValueError, match="needs a ViT"):
            make_config(preset, {"method": method})
        return
    cfg = make_config(preset, {"method": method})
    assert cfg.method == method
    assert cfg.adam_betas == (0.9, 0.98) and cfg.weight_decay == cfg.weight_decay_end == 0.05
    assert cfg.lr == pytest.approx(1.5e-3 / 2048 * 256) and cfg.clip_grad == 3.0
    assert cfg.drop_path == 0.1 and cfg.n_local == 0
    for key in ("data", "arch", "patch_size", "global_size", "batch_size", "minutes"):
        assert getattr(cfg, key) == getattr(make_config(preset), key)    # the preset's own


def test_explicit_values_win_over_the_method_defaults_and_dino_is_untouched():
    cfg = make_config("tinyimagenet", {"method": "beit", "drop_path": 0.0}, ["lr=0.01"])
    assert cfg.lr == 0.01 and cfg.drop_path == 0.0 and cfg.adam_betas == (0.9, 0.98)
    assert METHOD_DEFAULTS["dino"] == {}
    assert make_config("tinyimagenet").to_dict() == make_config("tinyimagenet", {"method": "dino"}).to_dict()
    with pytest.raises(ValueError, match="method must be"):
        make_config("cpu-demo", {"method": "byol"})
    with pytest.raises(ValueError, match="tokenizer must be"):
        make_config("cpu-demo", {"method": "beit", "tokenizer": "dvae"})


@pytest.mark.parametrize("images", [0, -5])
def test_tokenizer_images_below_one_is_refused(images):
    """kmeans with tokenizer_images=0 raised a traceback inside torch.stack; -5 silently meant
    "all images but 5" (a slice's negative end)."""
    with pytest.raises(ValueError, match=f"tokenizer_images must be >= 1, got {images}"):
        make_config("cpu-demo", {"method": "beit", "tokenizer": "kmeans", "tokenizer_images": images})
