"""The learning-rate schedule shared by the training scripts."""

import argparse

import pytest
import torch

from diffusers_dawn.training.accelerate_utils import create_lr_scheduler


def _learning_rates(num_training_steps, lr_schedule_steps=None, steps=6):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    args = argparse.Namespace(lr_scheduler="cosine", lr_warmup_steps=0, lr_schedule_steps=lr_schedule_steps)
    scheduler = create_lr_scheduler(args, optimizer, num_training_steps, min_learning_rate=0.1)
    rates = []
    for _ in range(steps):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return rates


def test_a_run_stopped_early_follows_the_longer_schedule_exactly():
    # A 6-step run on a 10-step schedule takes the first 6 learning rates of the 10-step run.
    assert _learning_rates(6, lr_schedule_steps=10) == pytest.approx(_learning_rates(10, steps=6), rel=1e-12)
    # Without it the schedule spans the run: cosine from 1 down to the minimum at the end.
    full = _learning_rates(6, steps=7)
    assert full[0] == pytest.approx(1.0) and full[-1] == pytest.approx(0.1)
