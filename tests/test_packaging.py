"""A clean first screen: building the editable install (what `pip install -e .` and `make demo`
run) prints no setuptools warning, and the wheel holds the package alone."""

import shutil
import subprocess
import sys
import zipfile

from conftest import ROOT


def test_the_editable_build_prints_no_warning_and_ships_only_the_package(tmp_path):
    src = tmp_path / "src"                 # a copy: the build writes egg-info and build/ folders
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "dino_lite", src / "dino_lite",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for folder in ("data", "docs", "notebooks", "tests", "benchmarks"):   # folders beside it
        (src / folder).mkdir()
    build = ("from setuptools import build_meta; "
             f"print(build_meta.build_editable({str(tmp_path / 'wheel')!r}))")
    (tmp_path / "wheel").mkdir()
    done = subprocess.run([sys.executable, "-W", "default", "-c", build], cwd=src,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    for alarm in ("Warning", "careful with folders", "deprecated", "!!"):
        assert alarm not in output, output
    wheel = tmp_path / "wheel" / done.stdout.strip().splitlines()[-1]
    tops = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
    # the editable wheel points at the checkout with a plain .pth file, no import hook
    assert tops == {"dino_lite-0.1.0.dist-info", "__editable__.dino_lite-0.1.0.pth"}, tops
