"""The table of what the CPU presets change from the paper is built from the configs."""

from dino_lite.config import make_config
from dino_lite.recipe_changes import WHY, changes_markdown, recipe_changes


def test_every_change_of_the_cpu_presets_has_a_reason():
    for preset in ("cpu-demo", "tinyimagenet"):
        missing = [r["field"] for r in recipe_changes(preset) if r["why"] == "no reason recorded"]
        assert not missing, f"{preset} changes {missing} from the paper: add a reason to WHY"


def test_rows_follow_the_configs():
    rows = {r["field"]: r for r in recipe_changes("cpu-demo")}
    cpu, paper = make_config("cpu-demo"), make_config("imagenet-vits16")
    assert rows["stem"]["preset"] == cpu.stem == "conv" and rows["stem"]["paper"] == paper.stem
    assert "momentum_teacher" in rows and "center_momentum" not in rows   # 0.9 in both
    assert not recipe_changes("imagenet-vits16")                          # the paper vs itself
    table = changes_markdown()
    assert table.count("\n") == 1 + len({r["field"] for p in ("cpu-demo", "tinyimagenet")
                                         for r in recipe_changes(p)})
    assert set(WHY) >= {r["field"] for r in recipe_changes("cpu-demo")}
