"""The retrieval, make-copies, copydetect and vos commands on tiny generated data, with --json."""

import json

import pytest

from dino_lite.cli import main

RANDOM = ["--preset", "tinyimagenet", "--random-init"]


def _last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_retrieval_on_class_folders(tiny_folder, tmp_path, capsys):
    common = ["--database", str(tiny_folder / "train"), "--queries", str(tiny_folder / "val"),
              "--out", str(tmp_path), "--json"]
    main(["retrieval", *RANDOM, "--multiscale", *common])
    r = _last_json(capsys)
    assert 0 < r["mAP"] <= 1 and r["queries"] == 12 and r["database"] == 96 and r["multiscale"]
    assert {"precision@1", "precision@5", "recall@10"} <= set(r)
    assert (tmp_path / "retrieval.png").stat().st_size > 0
    main(["retrieval", "--pixels", "--per-class", "4", *common])
    r = _last_json(capsys)
    assert r["queries"] <= 12 and r["database"] == 12 and r["model"] == "baseline: pixels"


def test_retrieval_without_classes_needs_ground_truth(tiny_folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["retrieval", "--pixels", "--database", str(tiny_folder / "images"),
              "--queries", str(tiny_folder / "images")])
    assert e.value.code == 2 and "--ground-truth" in capsys.readouterr().err


def test_make_copies_then_copydetect(tiny_folder, tmp_path, capsys):
    bench = tmp_path / "bench"
    main(["make-copies", "--images", str(tiny_folder / "train"), "--out", str(bench), "--seed", "1",
          "--originals", "6", "--distractors", "10", "--whitening-images", "20", "--json"])
    info = _last_json(capsys)
    assert info["queries"] == 12 and info["database"] == 16
    args = ["--database", str(bench / "database"), "--queries", str(bench / "queries"),
            "--ground-truth", str(bench / "ground_truth.csv"), "--out", str(tmp_path), "--json"]
    main(["copydetect", *RANDOM, "--whitening", str(bench / "whitening"), *args])
    r = _last_json(capsys)
    assert 0 < r["mAP"] <= 1 and r["queries"] == 12 and r["whitening"]
    main(["copydetect", "--pixels", *args])
    assert 0 < _last_json(capsys)["mAP"] <= 1
    assert (tmp_path / "copydetect.png").exists()


def test_vos_command_on_the_generated_video(tmp_path, capsys):
    from dino_lite.vos import write_davis
    root = write_davis(tmp_path / "davis", frames=5)
    out = tmp_path / "out"
    main(["vos", *RANDOM, "--davis", str(root), "--short-side", "64", "--out", str(out), "--json"])
    r = _last_json(capsys)
    assert set(r) >= {"J", "F", "JF", "frames_per_s", "peak_memory_mb"}
    assert 0 <= r["J"] <= 1 and r["JF"] == pytest.approx((r["J"] + r["F"]) / 2)
    assert (out / "shapes" / "00004.png").exists() and (out / "shapes.gif").exists()
    main(["vos", "--first-frame-baseline", "--davis", str(root), "--sequences", "shapes", "--json"])
    assert _last_json(capsys)["per_sequence"]["shapes"]["J"] < 1
