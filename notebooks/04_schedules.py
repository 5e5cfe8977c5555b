# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · Schedules: learning rate, weight decay, teacher momentum, teacher temperature
#
# DINO changes four numbers during training, and the reference code precomputes each as one
# array with a value per iteration. `dino_lite.train.make_schedules` does the same, so the
# schedule of a run can be plotted before it starts, tested at its endpoints, and resumed by
# reading index `step`.
#
# * **learning rate**: linear warm-up to `lr x batch / 256`, then cosine decay to `min_lr`;
# * **weight decay**: cosine from 0.04 up to 0.4 (a rising weight decay, unusual but the paper's);
# * **teacher momentum** lambda: cosine from 0.996 to 1. The teacher is an exponential moving
#   average of the student, `theta_t <- lambda theta_t + (1 - lambda) theta_s`, and freezes at the end;
# * **teacher temperature**: optional linear warm-up (0.04 -> 0.07 over 30 epochs in some runs).

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch

from dino_lite.config import make_config
from dino_lite.train import make_schedules
from dino_lite.loss import DINOLoss
from dino_lite.models import update_teacher

cfg = make_config("imagenet-vits16", dict(warmup_teacher_temp_epochs=30, teacher_temp=0.07))
steps_per_epoch = 1_281_167 // cfg.batch_size          # ImageNet-1k at batch 1024
total = cfg.epochs * steps_per_epoch
sched = make_schedules(cfg, total, cfg.batch_size)
temps = DINOLoss(8, total, cfg.warmup_teacher_temp, cfg.teacher_temp, sched["teacher_temp_warmup"]).teacher_temps
epochs = np.arange(total) / steps_per_epoch

fig, axes = plt.subplots(1, 4, figsize=(16, 3.2))
for ax, (name, y) in zip(axes, [("learning rate", sched["lr"]), ("weight decay", sched["wd"]),
                                ("teacher momentum", sched["momentum"]), ("teacher temperature", temps)]):
    ax.plot(epochs, y)
    ax.set(title=name, xlabel="epoch")
plt.suptitle(f"ViT-S/16 recipe, {cfg.epochs} epochs x {steps_per_epoch} steps, batch {cfg.batch_size}")
plt.tight_layout()
plt.show()
print(f"lr: 0 -> peak {sched['lr'].max():.2e} at epoch {cfg.warmup_epochs} -> {sched['lr'][-1]:.1e}")
print(f"momentum: {sched['momentum'][0]} -> {sched['momentum'][-1]}")

# %% [markdown]
# ## What the momentum does: the teacher averages the student over a window
# With momentum lambda, the teacher's weights are a moving average over roughly `1 / (1 - lambda)`
# steps of the student: 250 steps at 0.996, growing without bound as lambda -> 1. We follow one
# scalar "weight" of a student that moves randomly and watch the teacher smooth it.

# %%
rng = np.random.default_rng(0)
student_path = np.cumsum(rng.normal(0, 1, 3000))
teachers = {}
for lam in (0.9, 0.99, 0.996):
    student, teacher, trace = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False), []
    teacher.load_state_dict(student.state_dict())
    for w in student_path:
        with torch.no_grad():
            student.weight.fill_(w)
        update_teacher(student, teacher, lam)
        trace.append(teacher.weight.item())
    teachers[lam] = np.array(trace)
plt.figure(figsize=(8, 3))
plt.plot(student_path, c="lightgray", label="student")
for lam, trace in teachers.items():
    plt.plot(trace, label=f"teacher, lambda={lam}")
plt.legend()
plt.xlabel("step")
plt.title("the EMA teacher is a smoothed, lagging copy of the student")
plt.show()

# %% [markdown]
# ## Check
# The schedules start and end where the paper says, and the EMA update is exactly
# `lambda theta_t + (1 - lambda) theta_s`.

# %%
peak = cfg.lr * cfg.batch_size / 256
warm = int(round(cfg.warmup_epochs / cfg.epochs * total))
assert len(sched["lr"]) == total and sched["lr"][0] == 0.0
assert abs(sched["lr"][warm] - peak) < 1e-12 and abs(sched["lr"][-1] - cfg.min_lr) < 1e-12
assert abs(sched["wd"][0] - 0.04) < 1e-12 and abs(sched["wd"][-1] - 0.4) < 1e-12
assert abs(sched["momentum"][0] - 0.996) < 1e-12 and sched["momentum"][-1] == 1.0
assert np.all(np.diff(sched["momentum"]) >= 0)
assert temps[0] == 0.04 and abs(temps[30 * steps_per_epoch] - 0.07) < 1e-9 and temps[-1] == 0.07
expected = 0.99 * teachers[0.99][-2] + 0.01 * student_path[-1]
assert abs(teachers[0.99][-1] - expected) < 1e-4
print("all checks passed")
