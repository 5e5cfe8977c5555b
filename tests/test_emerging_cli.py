"""The retrieval, make-copies, copydetect and vos commands on tiny generated data, with --json."""

import json

import numpy as np
import pytest

from conftest import cli_error as _error, random_init
from dino_lite.cli import main
from dino_lite.retrieval import (MULTISCALE, embed_images, list_images, pixel_features, rank_database,
                                 score_rankings)

RANDOM = ["--preset", "tinyimagenet", "--random-init"]


def _last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _scores(queries, database, positive, junk=None):
    """The library's ranking scores of ``queries`` against ``database`` features."""
    _, order = rank_database(queries, database)
    scores = score_rankings(order, positive, junk, ks=(1, 5, 10))
    scores.pop("ap")
    return scores


def _assert_reports(r, expected):
    for key, value in expected.items():
        assert r[key] == pytest.approx(value), key


def test_retrieval_on_class_folders(tiny_folder, tmp_path, capsys):
    common = ["--database", str(tiny_folder / "train"), "--queries", str(tiny_folder / "val"),
              "--out", str(tmp_path), "--json"]
    main(["retrieval", *RANDOM, "--multiscale", *common])
    r = _last_json(capsys)
    assert r["queries"] == 12 and r["database"] == 96 and r["multiscale"]
    assert {"precision@1", "precision@5", "recall@10"} <= set(r)
    # the command reports the library's scores: multiscale features of the preset's random init,
    # relevance from the class folders
    from dino_lite.retrieval import relevance_from_classes
    backbone, cfg = random_init("tinyimagenet")
    (qf, qc), (df, dc) = list_images(tiny_folder / "val"), list_images(tiny_folder / "train")
    q, d = (embed_images(backbone, f, cfg.image_size, MULTISCALE) for f in (qf, df))
    _assert_reports(r, _scores(q, d, relevance_from_classes(qc, dc)))
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
    assert r["queries"] == 12 and r["whitening"]
    # the library's scores: whitened CLS+GeM features of the random init, the written ground truth
    from dino_lite.copydetect import Whitening, cls_gem_features
    from dino_lite.retrieval import read_ground_truth, relative_names
    backbone, cfg = random_init("tinyimagenet")
    qf, df = list_images(bench / "queries")[0], list_images(bench / "database")[0]
    pos, junk = read_ground_truth(bench / "ground_truth.csv", relative_names(qf, bench / "queries"),
                                  relative_names(df, bench / "database"))

    def embed(files):
        return embed_images(backbone, files, cfg.image_size, features=cls_gem_features)
    whiten = Whitening(embed(list_images(bench / "whitening")[0]))
    _assert_reports(r, _scores(whiten(embed(qf)), whiten(embed(df)), pos, junk))
    main(["copydetect", "--pixels", *args])
    _assert_reports(_last_json(capsys), _scores(pixel_features(qf), pixel_features(df), pos, junk))
    assert (tmp_path / "copydetect.png").exists()


def test_vos_command_on_the_generated_video(tmp_path, capsys):
    from dino_lite.vos import write_davis
    root = write_davis(tmp_path / "davis", frames=5)
    out = tmp_path / "out"
    main(["vos", *RANDOM, "--davis", str(root), "--short-side", "64", "--out", str(out), "--video",
          "--json"])
    r = _last_json(capsys)
    assert set(r) >= {"J", "F", "JF", "frames_per_s", "peak_memory_mb"}
    assert r["JF"] == pytest.approx((r["J"] + r["F"]) / 2)
    # the library's J and F: label propagation with the preset's random init, at the same size
    from dino_lite.vos import evaluate_davis
    backbone, _ = random_init("tinyimagenet")
    expected = evaluate_davis(root, backbone, short_side=64, progress=None)
    assert (r["J"], r["F"]) == pytest.approx((expected["J"], expected["F"]))
    assert (out / "shapes" / "00004.png").exists() and (out / "shapes.gif").exists()
    main(["vos", "--first-frame-baseline", "--davis", str(root), "--sequences", "shapes", "--json"])
    baseline = evaluate_davis(root, None, ["shapes"], progress=None)["sequences"][0]
    assert _last_json(capsys)["per_sequence"]["shapes"]["J"] == pytest.approx(baseline["J"])
    assert baseline["J"] < 1                         # the objects move: repeating frame 0 is wrong


@pytest.mark.parametrize("option, value, message", [
    ("--short-side", "0", "must be at least 1, got 0"), ("--short-side", "-128", "must be at least 1"),
    ("--radius", "-1", "must be at least 0, got -1"), ("--topk", "0", "must be at least 1, got 0"),
    ("--temperature", "0", "must be greater than 0"), ("--n-context", "-1", "must be at least 0")])
def test_vos_options_that_would_print_a_meaningless_score_are_refused(tmp_path, capsys, option,
                                                                        value, message):
    from dino_lite.vos import write_davis
    root = write_davis(tmp_path / "davis", frames=3)
    with pytest.raises(SystemExit) as stop:
        main(["vos", "--first-frame-baseline", "--davis", str(root), option, value])
    assert stop.value.code == 2
    assert f"argument {option}: {message}" in capsys.readouterr().err


def _strict_json(capsys):
    """The last line as JSON, refusing NaN and Infinity (not JSON, though Python writes them)."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    out = capsys.readouterr().out.strip().splitlines()
    return out, json.loads(out[-1], parse_constant=refuse)


def test_vos_names_the_sequences_it_cannot_score_and_writes_valid_json(tmp_path, capsys):
    from dino_lite.vos import evaluate_davis, write_davis
    root = write_davis(tmp_path / "davis", name="good", frames=4)
    write_davis(root, name="single", frames=1)
    main(["vos", "--first-frame-baseline", "--davis", str(root), "--json"])
    out, r = _strict_json(capsys)
    good = evaluate_davis(root, None, ["good"], progress=None)
    assert r["J"] == pytest.approx(good["J"]) and r["sequences_scored"] == 1 and r["objects"] == 2
    assert r["per_sequence"]["single"] == {"J": None, "F": None}
    assert r["not_scored"] == {"single": "1 annotated frame: DAVIS scores those between the first "
                                         "and the last"}
    assert "over 1 sequence (2 objects); 1 not scored: single (1 annotated frame" in out[-2]
    main(["vos", "--first-frame-baseline", "--davis", str(root), "--sequences", "single", "--json"])
    out, r = _strict_json(capsys)
    assert (r["J"], r["F"], r["JF"], r["sequences_scored"]) == (None, None, None, 0)
    assert "no sequence could be scored: single (1 annotated frame" in out[-2]


def test_vos_names_an_annotation_of_another_size(tmp_path, capsys):
    from PIL import Image
    from dino_lite.vos import write_davis
    root = write_davis(tmp_path / "davis", frames=3)
    bad = root / "Annotations" / "shapes" / "00001.png"
    with Image.open(bad) as im:
        im.resize((48, 32)).save(bad)
    with pytest.raises(SystemExit):
        main(["vos", "--first-frame-baseline", "--davis", str(root)])
    err = capsys.readouterr().err.strip()
    assert err == (f"error: annotation {bad} is 48x32 px but its frame "
                   f"{root / 'JPEGImages' / 'shapes' / '00001.jpg'} is 96x64 px; annotations must "
                   "have their frame's size")


def test_vos_and_attention_videos(tmp_path, capsys):
    """`vos --video` writes each sequence's propagated masks as a GIF; `attention --video` the
    maps of a frame folder, frames in numeric order (1.jpg ... 12.jpg, as ffmpeg names them)."""
    import numpy as np
    from PIL import Image
    from dino_lite.vos import write_davis
    root = write_davis(tmp_path / "davis", frames=5)
    main(["vos", "--first-frame-baseline", "--davis", str(root), "--video", "--out", str(tmp_path / "v")])
    assert f"video: {tmp_path / 'v' / 'shapes.gif'}" in capsys.readouterr().out
    with Image.open(tmp_path / "v" / "shapes.gif") as gif:
        assert gif.n_frames == 5
    frames = tmp_path / "frames"
    frames.mkdir()
    for k in range(1, 13):          # uniform frames, brighter each time: uniform attention on each
        Image.fromarray(np.full((40, 56, 3), 18 * k, np.uint8)).save(frames / f"{k}.jpg")
    main(["attention", *RANDOM, "--images", str(frames), "--video", "--out", str(tmp_path / "a"),
          "--image-size", "32", "--json"])
    r = _last_json(capsys)
    assert r == {"images": 12, "video": str(tmp_path / "a" / "attention.gif")}
    with Image.open(r["video"]) as gif:
        means = []
        for i in range(gif.n_frames):
            gif.seek(i)
            means.append(np.asarray(gif.convert("RGB"), np.float32).mean())
    assert len(means) == 12 and all(a < b for a, b in zip(means, means[1:]))


# -- robustness (issue 36): inputs users really have -----------------------------------------------

def _noise_png(path, size=(24, 24), seed=0):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def test_retrieval_ranks_a_subfolder_beside_images_directly_inside(tmp_path, capsys):
    """Distractors kept in a subfolder of a database whose other images sit directly inside were
    dropped (2 database images instead of 6, and a higher mAP); now every image is ranked."""
    db, q = tmp_path / "db", tmp_path / "q"
    for i in range(2):
        _noise_png(db / f"d{i}.png", seed=i)
        _noise_png(q / f"q{i}.png", seed=i)                 # each query is its match's pixels
    for i in range(4):
        _noise_png(db / "distractors" / f"x{i}.png", seed=10 + i)
    _noise_png(db / ".ipynb_checkpoints" / "d0-checkpoint.png")   # hidden: skipped
    _noise_png(db / "distractors" / ".x0.png")
    gt = tmp_path / "gt.csv"
    gt.write_text("query,match\nq0.png,d0.png\nq1.png,d1.png\n")
    main(["retrieval", "--pixels", "--database", str(db), "--queries", str(q), "--ground-truth",
          str(gt), "--out", str(tmp_path / "out"), "--json"])
    assert _last_json(capsys)["database"] == 6
    files, classes = list_images(db)
    from dino_lite.retrieval import relative_names
    assert classes is None and sorted(relative_names(files, db)) == [
        "d0.png", "d1.png", *(f"distractors/x{i}.png" for i in range(4))]
    # without a ground truth such a folder cannot be read as class folders: said, naming it
    err = _error(capsys, ["retrieval", "--pixels", "--database", str(db), "--queries", str(db)])
    assert f"{db} holds 2 images directly" in err


def _numeric_cases(tiny):
    classes = ["--database", str(tiny / "train"), "--queries", str(tiny / "val")]
    copies = ["--images", str(tiny / "train"), "--out", "unused"]
    return [
        (["retrieval", *RANDOM, *classes, "--image-size", "-64"], "--image-size: must be at least 1"),
        (["retrieval", *RANDOM, *classes, "--image-size", "0"], "--image-size: must be at least 1"),
        (["retrieval", "--pixels", *classes, "--per-class", "0"], "--per-class: must be at least 1"),
        (["retrieval", "--pixels", *classes, "--per-class", "-1"], "--per-class: must be at least 1"),
        (["copydetect", "--pixels", *classes, "--ground-truth", "x.csv", "--image-size", "-8"],
         "--image-size: must be at least 1"),
        (["copydetect", "--pixels", *classes, "--ground-truth", "x.csv", "--per-class", "0"],
         "--per-class: must be at least 1"),
        (["make-copies", *copies, "--originals", "-1"], "--originals: must be at least 1"),
        (["make-copies", *copies, "--copies", "0"], "--copies: must be at least 1"),
        (["make-copies", *copies, "--distractors", "-5"], "--distractors: must be at least 0"),
        (["make-copies", *copies, "--whitening-images", "-3"], "--whitening-images: must be at least 0"),
        (["make-copies", *copies, "--seed", "-1"], "--seed: must be at least 0"),
    ]


@pytest.mark.parametrize("case", range(11))
def test_numeric_options_are_refused_at_parse_time(tiny_folder, tmp_path, monkeypatch, capsys, case):
    """`--image-size -64` evaluated at 8 px, `--per-class 0` was ignored, `--per-class -1` raised a
    traceback, negative make-copies counts built an overlapping benchmark."""
    monkeypatch.chdir(tmp_path)
    argv, message = _numeric_cases(tiny_folder)[case]
    assert message in _error(capsys, argv)
    assert not (tmp_path / "unused").exists()


def test_image_sizes_the_model_cannot_take_or_ignores_are_refused(tiny_folder, tmp_path, capsys):
    classes = ["--database", str(tiny_folder / "train"), "--queries", str(tiny_folder / "val"),
               "--out", str(tmp_path)]
    err = _error(capsys, ["retrieval", *RANDOM, *classes, "--image-size", "60"])
    assert "--image-size 60 is not a multiple of the model's patch size 8" in err
    err = _error(capsys, ["retrieval", "--pixels", *classes, "--image-size", "64"])
    assert "--image-size has no effect with --pixels" in err
    # --per-class needs classes: with a ground truth over plain folders it cannot pick "per class"
    err = _error(capsys, ["retrieval", "--pixels", "--database", str(tiny_folder / "images"),
                          "--queries", str(tiny_folder / "images"), "--ground-truth", "x.csv",
                          "--per-class", "2"])
    assert "--per-class needs class subfolders" in err


def test_an_elongated_image_in_a_retrieval_folder_is_cropped_with_a_warning(tmp_path, capsys):
    """A 1000x2 px image became 32,000 tokens (16 GB of attention); its centre at 4:1 is used."""
    from PIL import Image
    for k, c in enumerate(("a", "b")):
        for i in range(2):
            _noise_png(tmp_path / "db" / c / f"{c}{i}.png", seed=2 * k + i)
    Image.new("RGB", (1000, 2), (200, 10, 10)).save(tmp_path / "db" / "a" / "line.png")
    with pytest.warns(UserWarning, match=r"1 image.*4:1.*line.png \(1000x2 px\)"):
        main(["retrieval", *RANDOM, "--set", "depth=1", "--database", str(tmp_path / "db"), "--queries",
              str(tmp_path / "db"), "--out", str(tmp_path / "out"), "--json"])
    assert _last_json(capsys)["database"] == 5


def test_degenerate_whitening_sets_are_refused_not_ranked_by_index(tiny_folder, tmp_path, capsys):
    """Whitening learned on identical images kept 0 components: every similarity was 0 and the
    ranking the index order, the same mAP for every model, without a word."""
    from PIL import Image
    bench = tmp_path / "bench"
    main(["make-copies", "--images", str(tiny_folder / "train"), "--out", str(bench),
          "--originals", "3", "--distractors", "3", "--whitening-images", "0"])
    same = tmp_path / "same"
    same.mkdir()
    img = Image.open(next((tiny_folder / "train").rglob("*.png")))
    for i in range(6):
        img.save(same / f"w{i}.png")
    args = ["--database", str(bench / "database"), "--queries", str(bench / "queries"),
            "--ground-truth", str(bench / "ground_truth.csv"), "--out", str(tmp_path / "out")]
    err = _error(capsys, ["copydetect", "--pixels", "--whitening", str(same), *args])
    assert str(same) in err and "6 images" in err and "0 directions" in err
