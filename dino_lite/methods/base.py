"""The interface every training method implements; the loop (:class:`dino_lite.train.Trainer`)
calls nothing else of a method.

A method is a class of static hooks (it holds no state: the loop keeps the networks, the loss
state and the optimiser, so checkpoints, the time budget's probe and exact resume treat every
method alike). A checkpoint holds ``student``, ``teacher`` and ``loss``, the state dicts of what
:meth:`Method.networks` and :meth:`Method.loss_state` return; evaluation reads the ``teacher``'s
``backbone.*`` weights.
"""

from __future__ import annotations

from torch import nn


class Method:
    defaults: dict = {}          # the optimisation the method was published with (see make_config)
    needs_tokenizer = False      # whether networks() takes a fitted patch tokenizer
    # whether the loss reads the CLS token's output. If it does not, the last block's CLS
    # attention (which feeds only that output) gets no gradient: where it looks is a by-product
    # of weights trained for the patch tokens, not something the encoder learned to look at
    trains_cls_attention = True

    @staticmethod
    def validate(cfg):
        """Raise ValueError for settings this method cannot train with."""

    @staticmethod
    def networks(cfg, fused_attention: bool, tokenizer=None) -> tuple[nn.Module, nn.Module]:
        """``(student, teacher)``, freshly initialised: the optimiser trains the student; a
        method with one network returns it twice."""
        raise NotImplementedError

    @staticmethod
    def schedules(cfg, total_steps: int, steps, steps_per_epoch: int | None) -> dict:
        """Per-step values of the method's own beside the loop's lr and weight decay;
        ``steps(epochs)`` converts a length in epochs of the recipe to steps of this run."""
        return {}

    @staticmethod
    def loss_state(cfg, total_steps: int, sched: dict) -> nn.Module:
        """What the objective keeps across steps (DINO: its centers); laid out again over a new
        length, keeping its state. None by default: an empty module."""
        return nn.Module()

    @staticmethod
    def step(views, step, student, teacher, loss_fn, optimizer, sched, cfg, proc,
             student_forward=None) -> dict:
        """One training step on a batch of views, from the forward passes to the optimiser step
        and what follows it; returns the step's log record (``loss`` first)."""
        raise NotImplementedError

    @staticmethod
    def encoder(student, teacher) -> nn.Module:
        """The backbone evaluation uses."""
        return teacher.backbone
