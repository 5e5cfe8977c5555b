"""The notebooks' check cells can fail: each case breaks one claim in a notebook's code (the
text substitution a student might make by mistake) and runs the notebook's .py twin as a script;
its check cell must then raise an AssertionError. The notebooks that read the shared run (00, 04,
05, 06, 07, 09) get it first: trained here when absent (as a notebook run before 00 would), so that
`make test`, which runs these tests before the notebooks, exercises them too; the notebooks
then reuse it."""

from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
READ_THE_SHARED_RUN = ("00_quickstart", "04_schedules", "05_train_and_evaluate", "06_attention_maps",
                       "07_ablations", "09_emerging_properties")

# (notebook, the sentence the check guards, code as written, the breakage); a breakage of several
# edits gives tuples of old and new
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
    ("06_attention_maps", "an object head far above random init's: trained and random maps swapped",
     "maps = attention_maps(backbone, images)", "maps = attention_maps(random_backbone, images)"),
    ("06_attention_maps", "the heads differ: the head-mean map copied into every head",
     "maps = attention_maps(backbone, images)",
     "maps = attention_maps(backbone, images).mean(1, keepdim=True).expand(-1, 4, -1, -1)"),
    ("04_schedules", "student copy against momentum: the rows swapped",
     'momentum, copy = ours["teacher_momentum"], ours["teacher_student_copy"]',
     'copy, momentum = ours["teacher_momentum"], ours["teacher_student_copy"]'),
    ("04_schedules", "the previous-epoch sentence's error is the difference's: se_diff as one accuracy's error",
     "return math.sqrt(p * (1 - p) / n + q * (1 - q) / n)", "return math.sqrt(p * (1 - p) / n)"),
    ("05_train_and_evaluate", "trained features beat every random init: the trained net replaced",
     'nets = {"DINO (trained)": backbone}', 'nets = {"DINO (trained)": random_init_backbone(cfg, seed=7)}'),
    ("07_ablations", "the momentum teacher beats the student copy: the two rows swapped",
     'dino, copy = rows["dino"], rows["no_momentum"]', 'copy, dino = rows["dino"], rows["no_momentum"]'),
    ("09_emerging_properties", "retrieval, copy detection and VOS follow the trained features: "
     "the trained net replaced",
     'models = {"DINO (trained)": trained,', 'models = {"DINO (trained)": random_init_backbone(cfg, seed=7),'),
    ("08_masked_image_modelling", "longer pre-training: the 4,000-step fine-tuning replaced by the 2,000-step one",
     'finetune_top1=longer["cells"][0]["finetune_top1"]', 'finetune_top1=long_dino["finetune_top1"]'),
    ("08_masked_image_modelling", "the paired gap is beyond two SEs: random init's hits reversed (the images unpaired)",
     '[r["correct"] for r in tuned["random-init"]]', '[r["correct"][::-1] for r in tuned["random-init"]]'),
    ("08_masked_image_modelling", "15 epochs is not random init's plateau: the 30-epoch run replaced by a 15-epoch one",
     'g30, e30 = paired_gap([long30["correct"]]', 'g30, e30 = paired_gap([tuned["random-init"][1]["correct"]]'),
    ("08_masked_image_modelling", "at 30 epochs each the lead is under two SEs: the baseline replaced by the "
     "15-epoch random init (not converged)",
     'g_fair, e_fair = fair_cell["over_random_init"], fair_cell["over_random_init_se"]',
     'g_fair, e_fair = paired_gap(fair_run["finetune_correct"], [r["correct"] for r in tuned["random-init"]])'),
    ("08_masked_image_modelling", "8,000 steps fine-tune clearly above random init: the cell replaced by the "
     "4,000-step one", 'twice_gap = over_random_init(twice_cell, twice["runs"], fair_base)',
     'twice_gap = over_random_init(fair_cell, fair["runs"], fair_base)'),
    ("08_masked_image_modelling", "DINO's attention on the pets beats random init's: the encoders swapped",
     'dino_pets, rand_pets = pets["dino4000"], pets["random-init"]',
     'rand_pets, dino_pets = pets["dino4000"], pets["random-init"]'),
    ("08_masked_image_modelling", "on the bf16 CPU 8,000 steps' head-mean map falls below 4,000's: the "
     "encoders swapped", 'd8, d4, r16, d8s1 = pets16["dino8000"], pets16["dino4000"], pets16["random-init"]',
     'd4, d8, r16, d8s1 = pets16["dino8000"], pets16["dino4000"], pets16["random-init"]'),
    ("08_masked_image_modelling", "at 10% of the images DINO fine-tunes level with 100%: the 10% cell's "
     "fine-tunings replaced by random init's", 'for f in (1.0, 0.1)}',
     'for f in (1.0, 0.1)} | {0.1: fair_base["finetune_correct"]}'),
    ("08_masked_image_modelling", "the 10% encoder's attention is above the 100% one's: the 100% encoder "
     "scored in its place", 'STUDY.parent / "pets-attention-dino8000-10pct-bf16.json"',
     'STUDY.parent / "pets-attention-dino8000-bf16.json"'),
    ("08_masked_image_modelling", "SplitMask's 100% cell fine-tunes below DINO's: the two swapped in the "
     "paired gap", 'g_sd, e_sd = paired_gap(sm_run["finetune_correct"], hits[1.0])',
     'g_sd, e_sd = paired_gap(hits[1.0], sm_run["finetune_correct"])'),
    ("08_masked_image_modelling", "SplitMask's CLS attention is below random init's: the 10% DINO "
     "encoder scored in its place", 'STUDY.parent / "pets-attention-splitmask8000-bf16.json"',
     'STUDY.parent / "pets-attention-dino8000-10pct-bf16.json"'),
    ("08_masked_image_modelling", "over the four cells the two drops are level: DINO's 10% fine-tunings "
     "replaced by random init's", 'hit = {k: cell_hits(four["runs"], k) for k in four_cells}',
     'hit = {k: cell_hits(four["runs"], k) for k in four_cells}'
     ' | {("dino", 0.1): np.mean(fair_base["finetune_correct"], axis=0)}'),
    ("08_masked_image_modelling", "the difference counted here is the package's verdict: DINO's "
     "fractions swapped in the count", 'per_image = (hit[(a, 1.0)] - hit[(a, 0.1)])',
     'per_image = (hit[(a, 0.1)] - hit[(a, 1.0)])'),
    ("08_masked_image_modelling", "at two pre-training seeds the drops are level: DINO's 10% "
     "fine-tunings replaced by random init's", 'hit2 = {k: cell_hits(eight["runs"], k) for k in eight_cells}',
     'hit2 = {k: cell_hits(eight["runs"], k) for k in eight_cells}'
     ' | {("dino", 0.1): np.mean(fair_base["finetune_correct"], axis=0)}'),
    ("08_masked_image_modelling", "the two-seed interval holds the seeds' spread: the pre-training "
     "seeds' errors left out of the count", "drop_difference(hit2, [(s, 1) for s in seed_se2])",
     "drop_difference(hit2, [])"),
    ("08_masked_image_modelling", "random init needs 90 epochs to flatten: the 60-epoch run read as "
     "the 90-epoch one", 'rand90 = rand90_file["result"]', "rand90 = rand60"),
    ("08_masked_image_modelling", "DINO keeps a lead over the converged random init: its 60-epoch "
     "fine-tuning replaced by its 30-epoch one",
     '("DINO 60 − random init 90", *paired_gap(dino60["finetune_correct"], rand90["finetune_correct"]))',
     '("DINO 60 − random init 90", *paired_gap(dino30["finetune_correct"][:1], rand90["finetune_correct"]))'),
    ("08_masked_image_modelling", "DINO's drop minus BEiT's is counted as the package counts it: "
     "SplitMask's cells read as BEiT's", 'drop_difference(hit_b, spreads_b, b="beit")',
     'drop_difference(hit_b, spreads_b, b="splitmask")'),
    ("08_masked_image_modelling", "DINO's drop minus BEiT's holds the pre-training seeds' spread: "
     "the four cells' seed errors left out of the count",
     "spreads_b = [(s, 1) for s in seed_se_b]", "spreads_b = []"),
    ("08_masked_image_modelling", "the paper's 4.6 points lie outside BEiT's interval: the paper's "
     "BEiT and SplitMask drops compared instead", 'paper_diff_b = paper_drop["dino"] - paper_drop["beit"]',
     'paper_diff_b = paper_drop["beit"] - paper_drop["splitmask"]'),
    ("08_masked_image_modelling", "the paper's DINO's drop minus each masked model's is counted as the "
     "package counts it: the four cells' seed errors left out of the count",
     "[(s, 1) for s in seed_se_pb]", "[]"),
    ("08_masked_image_modelling", "the two terms carried DINO's cells: the cells with and without them "
     "swapped", 'terms = {f: cell_apart(eight["runs"], paper_dino["runs"], ("dino", f), eight_cells[("dino", f)],',
     'terms = {f: cell_apart(paper_dino["runs"], eight["runs"], ("dino", f), eight_cells[("dino", f)],'),
    ("08_masked_image_modelling", "the one command's DINO on 100% is level with its random init: DINO's "
     "10% cell read as its 100%", 'lead = over_random_init(whole_cells[("dino", 1.0)]',
     'lead = over_random_init(whole_cells[("dino", 0.1)]'),
    ("10_scaling_up", "two processes train the one-process run: BatchNorm in the head",
     # the exercise the text names: per-process batch statistics make the runs differ (trained
     # into folders of their own, so the notebook's runs are left as they are)
     ('"head_bn=false", ', 'f"ddp-{processes}proc-{STEPS}steps"'),
     ('', 'f"ddp-bn-{processes}proc-{STEPS}steps"')),
]


def run_notebook(name, old, new, monkeypatch):
    """Execute the code cells of ``name``'s .py twin, with ``old`` replaced by ``new``, in the
    notebooks' folder as the notebook would be. Returns None when every cell ran, else the
    exception a cell raised and whether that cell is the check cell (the code cell after the
    "## Check" heading)."""
    nb = jupytext.read(NOTEBOOKS / f"{name}.py")
    cells, check = [], None
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.source.startswith("## Check"):
            check = len(cells)
        elif cell.cell_type == "code":
            cells.append(cell.source)
    assert check is not None and check < len(cells), f"{name}: no check cell after a '## Check' heading"
    olds, news = (old, new) if isinstance(old, tuple) else ((old,), (new,))
    for o, n in zip(olds, news, strict=True):
        assert sum(c.count(o) for c in cells) == 1, f"{name}: {o!r} is not in the notebook once"
        cells = [c.replace(o, n) for c in cells]
    monkeypatch.chdir(NOTEBOOKS)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    import matplotlib
    matplotlib.use("Agg")
    import IPython.display               # outside a kernel display() returns no handle to update

    class Handle:
        def update(self, *args, **kwargs):
            pass
    monkeypatch.setattr(IPython.display, "display", lambda *args, **kwargs: Handle())
    namespace = {"__name__": "__notebook__"}
    for i, source in enumerate(cells):
        try:
            exec(compile(source, f"{name}.py", "exec"), namespace)
        except Exception as e:          # noqa: BLE001 (reported to the test, which names it)
            return e, i == check
    return None


@pytest.mark.slow
@pytest.mark.parametrize("name, claim, old, new", BREAKAGES, ids=[f"{b[0][:2]}-{b[1].split(':')[-1].strip()}" for b in BREAKAGES])
def test_a_broken_claim_fails_the_check_cell(name, claim, old, new, monkeypatch):
    if name in READ_THE_SHARED_RUN:
        from dino_lite.notebook import DEMO_STEPS, demo_rows, demo_run
        demo_run(repo_root=NOTEBOOKS.parent)                 # 00's run, trained once, then reused
        if name == "04_schedules":                           # the row notebook 04 adds, the same way
            demo_rows(["teacher_student_copy"], until=DEMO_STEPS // 2, repo_root=NOTEBOOKS.parent)
    failure = run_notebook(name, old, new, monkeypatch)
    assert failure is not None, f"{name}: the notebook ran to the end with the claim broken"
    error, in_check = failure
    assert isinstance(error, AssertionError) and in_check, \
        f"{name}: expected the check cell to fail, got {error!r} {'in' if in_check else 'before'} it"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["02_teacher_student_loss"])
def test_the_unbroken_notebook_passes_its_checks(name, monkeypatch):
    """The control: without a breakage the same harness runs the check cell to the end."""
    assert run_notebook(name, "all checks passed", "all checks passed", monkeypatch) is None
