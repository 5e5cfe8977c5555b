"""make demo ends with three lines (k-NN trained vs random init and the gap, the attention
Jaccard, where the figures are), read from the JSON files its commands write."""

import json
import re

import pytest

from conftest import ROOT
from dino_lite.cli import DEMO_RESULTS, main, summary_lines


def fake_demo(run, **override):
    results = {"knn.json": {"knn_top1": 0.759, "k": 20},
               "knn-random-init.json": {"knn_top1": 0.376, "k": 20},
               "attention.json": {"jaccard": 0.4512, "figure": f"{run}/attention/attention.png"},
               "attention-random-init.json": {
                   "jaccard": 0.2371, "figure": f"{run}/attention-random-init/attention.png"}}
    results.update(override)
    run.mkdir(parents=True, exist_ok=True)
    for name, obj in results.items():
        (run / name).write_text(obj if isinstance(obj, str) else json.dumps(obj))


def test_three_lines_from_the_demos_json(tmp_path, capsys):
    fake_demo(tmp_path / "demo")
    main(["summary", "--run", str(tmp_path / "demo")])
    assert capsys.readouterr().out.splitlines() == [
        "k-NN top-1: 75.9% trained vs 37.6% random init, a gap of +38.3 points",
        "attention Jaccard: 0.45 trained vs 0.24 random init",
        f"figures: {tmp_path}/demo/attention/attention.png and "
        f"{tmp_path}/demo/attention-random-init/attention.png"]


@pytest.mark.parametrize("override,message", [
    ({"knn.json": "{not json"}, "knn.json is not a JSON object"),
    ({"attention.json": {"images": 200, "figure": "x.png"}}, "attention.json has no 'jaccard'"),
])
def test_broken_results_are_named(tmp_path, capsys, override, message):
    fake_demo(tmp_path, **override)
    with pytest.raises(SystemExit) as e:
        main(["summary", "--run", str(tmp_path)])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_a_missing_result_names_the_command_that_writes_it(tmp_path):
    fake_demo(tmp_path)
    (tmp_path / "knn-random-init.json").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(
            "knn --preset cpu-demo --random-init --json")):
        summary_lines(tmp_path)


def test_make_demo_writes_what_the_summary_reads_and_ends_with_it():
    text = (ROOT / "Makefile").read_text()
    recipe = text.split("\ndemo:", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    commands = [line.strip().lstrip("@") for line in recipe]
    assert commands[-1] == "$(BIN)/python -m dino_lite summary --run $(DEMO_OUT)"
    for name, command in DEMO_RESULTS.items():
        (line,) = [c for c in commands if c.endswith(f"--json $(DEMO_OUT)/{name}")]
        words = command.replace("RUN", "$(DEMO_OUT)").split()
        assert all(w in line.split() for w in words), (name, line)
