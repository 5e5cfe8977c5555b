"""The notebooks' check cells can fail: each case breaks one claim in a notebook's code (the
text substitution a student might make by mistake) and runs the notebook's .py twin as a script;
its check cell must then raise an AssertionError. The notebooks that read the shared run (00, 04)
are skipped when it has not been trained (notebook 00 trains it)."""

from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
SHARED_RUN = NOTEBOOKS.parent / "runs" / "notebooks" / "shapes-160steps"

# (notebook, the sentence the check guards, code as written, the breakage)
BREAKAGES = [
    ("01_vit_patching", "sixteen times the attention: a linear-cost attention core",
     # linear attention (Katharopoulos et al. 2020 without the feature map): the same matmuls
     # reassociated, K^T V first, so its cost grows with n, not n^2
     "F.scaled_dot_product_attention(q, k, v)", "q @ (k.transpose(-2, -1) @ v)"),
    ("02_teacher_student_loss", "the hand-written step is the package's: same-view pairs kept",
     "for j in range(len(x)) if j != i]", "for j in range(len(x))]"),
    ("02_teacher_student_loss", "the hand-written step is the package's: the EMA's weights swapped",
     "p_teacher.mul_(lam).add_(p_student, alpha=1 - lam)", "p_teacher.mul_(1 - lam).add_(p_student, alpha=lam)"),
    ("03_centering_and_sharpening", "both operations keep the teacher informative: no sharpening",
     '"centering + sharpening": dict(centering=True, sharpening=True)',
     '"centering + sharpening": dict(centering=True, sharpening=False)'),
    ("00_quickstart", "attention finds the objects: trained and random maps swapped",
     "maps_trained = attention_maps(backbone, images)", "maps_trained = attention_maps(random_backbone, images)"),
    ("04_schedules", "student copy against momentum: the rows swapped",
     'momentum, copy = ours["teacher_momentum"], ours["teacher_student_copy"]',
     'copy, momentum = ours["teacher_momentum"], ours["teacher_student_copy"]'),
]


def run_notebook(name, old, new, monkeypatch):
    """Execute the code cells of ``name``'s .py twin, with ``old`` replaced by ``new``, in the
    notebooks' folder as the notebook would be; returns nothing, raises what a cell raises."""
    nb = jupytext.read(NOTEBOOKS / f"{name}.py")
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert sum(c.count(old) for c in code) == 1, f"{name}: {old!r} is not in the notebook once"
    code = [c.replace(old, new) for c in code]
    monkeypatch.chdir(NOTEBOOKS)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    import matplotlib
    matplotlib.use("Agg")
    namespace = {"__name__": "__notebook__"}
    for source in code:
        exec(compile(source, f"{name}.py", "exec"), namespace)


@pytest.mark.slow
@pytest.mark.parametrize("name, claim, old, new", BREAKAGES, ids=[f"{b[0][:2]}-{b[1].split(':')[-1].strip()}" for b in BREAKAGES])
def test_a_broken_claim_fails_the_check_cell(name, claim, old, new, monkeypatch):
    if name in ("00_quickstart", "04_schedules") and not (SHARED_RUN / "dino" / "result.json").exists():
        pytest.skip("the notebooks' shared run is not trained (run notebook 00 first)")
    if name == "04_schedules" and not (SHARED_RUN / "teacher_student_copy" / "result.json").exists():
        pytest.skip("notebook 04's student-copy row is not trained (run notebook 04 first)")
    with pytest.raises(AssertionError):
        run_notebook(name, old, new, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["02_teacher_student_loss"])
def test_the_unbroken_notebook_passes_its_checks(name, monkeypatch):
    """The control: without a breakage the same harness runs the check cell to the end."""
    run_notebook(name, "all checks passed", "all checks passed", monkeypatch)
