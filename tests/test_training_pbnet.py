"""PBNet training: KL schedule, 1-D PatchGAN, the loss terms, sequence windows, overfitting, and `train_pbnet` end to end."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusers_dawn.models.pbnet import PBNetModel
from diffusers_dawn.training.dataset import load_dawn_dataset
from diffusers_dawn.training.pbnet_trainer import (
    PatchDiscriminator1D,
    PBNetSequenceDataset,
    collate_sequences,
    kl_weight,
    pbnet_loss,
)
from diffusers_dawn.training.run_pbnet import PBNetTrainingConfig, train_pbnet

from _a2v_utils import single_thread  # noqa: F401
from _training_utils import TINY_DATASET_FRAMES, TINY_HUBERT_DIM, build_tiny_dataset


TINY_PBNET_CONFIG = dict(
    audio_dim=TINY_HUBERT_DIM,
    pose_latent_dim=8,
    audio_latent_dim=16,
    latent_dim=8,
    ff_size=16,
    num_layers=1,
    num_heads=2,
    attention_head_dim=8,
    num_buckets=8,
    max_distance=16,
)


def tiny_pbnet(state: str = "pose", seed: int = 0) -> PBNetModel:
    torch.manual_seed(seed)
    if state == "pose":
        return PBNetModel(**TINY_PBNET_CONFIG)
    return PBNetModel(**TINY_PBNET_CONFIG, state_dim=2, state_min=None, state_max=None)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return build_tiny_dataset(tmp_path_factory.mktemp("pbnet_data"), num_videos=2, resolution=32)


# -- schedule and discriminator ---------------------------------------------------------------------------------------
def test_kl_schedules_give_the_official_numbers():
    # Official: 0 before epoch 10000, then 0.004 · max(progress, 1) with progress over 70000 epochs.
    assert kl_weight(1) == 0 and kl_weight(9999) == 0
    assert kl_weight(10000) == pytest.approx(0.004) and kl_weight(80000) == pytest.approx(0.004)
    assert kl_weight(87000) == pytest.approx(0.004 * 1.1)  # keeps growing: the official `max` quirk
    # The linear warm-up it was most likely meant to be.
    assert kl_weight(9999, "linear_warmup") == 0 and kl_weight(10000, "linear_warmup") == 0
    assert kl_weight(45000, "linear_warmup") == pytest.approx(0.002)
    assert kl_weight(87000, "linear_warmup") == pytest.approx(0.004)
    with pytest.raises(ValueError, match="kl schedule"):
        kl_weight(1, "cosine")


@pytest.mark.parametrize("frames, patches", [(200, 23), (38, 2), (24, 1)])
def test_patch_discriminator_gives_one_logit_per_patch(frames, patches):
    # Three stride-2 convolutions (k4 p1) halve the frames (floor), the two stride-1 ones (k4 p1) remove one each.
    discriminator = PatchDiscriminator1D(state_dim=6)
    assert discriminator(torch.randn(3, frames, 6)).shape == (3, patches)
    assert math.floor(frames / 8) - 2 == patches
    with pytest.raises(ValueError, match="at least 24"):
        discriminator(torch.randn(1, 23, 6))
    with pytest.raises(ValueError, match=r"\(batch, frames, 6\)"):
        discriminator(torch.randn(1, 40, 2))


# -- loss terms -------------------------------------------------------------------------------------------------------
def _padded_batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    states = torch.rand(2, 30, 6, generator=generator) * 0.2 + 0.4
    audio = torch.randn(2, 30, TINY_HUBERT_DIM, generator=generator)
    lengths = torch.tensor([30, 26])
    states[1, 26:] = 0
    audio[1, 26:] = 0
    return states, audio, lengths


def test_reconstruction_and_kl_are_averaged_over_valid_frames():
    pbnet = tiny_pbnet().eval()
    states, audio, lengths = _padded_batch()
    losses = pbnet_loss(pbnet, None, states, audio, lengths, kl_weight_value=0.5,
                        generator=torch.Generator().manual_seed(1))
    output = pbnet(states, audio, lengths=lengths, generator=torch.Generator().manual_seed(1))
    valid = [(0, slice(0, 30)), (1, slice(0, 26))]
    errors = torch.cat([(output.prediction[b, f] - (states[b, f] - states[b, :1])).flatten() for b, f in valid])
    torch.testing.assert_close(losses.reconstruction, (errors**2).mean())
    kl_terms = torch.cat([(1 + output.logvar[b, f] - output.mu[b, f] ** 2 - output.logvar[b, f].exp()).flatten()
                          for b, f in valid])
    torch.testing.assert_close(losses.kl, -0.5 * kl_terms.mean())
    torch.testing.assert_close(losses.loss, losses.reconstruction + 0.5 * losses.kl)
    assert losses.generator_adversarial.item() == 0 and losses.discriminator.item() == 0


def test_adversarial_terms_follow_the_chosen_update():
    states, audio, lengths = _padded_batch(2)
    for update in ("official", "alternating"):
        pbnet, discriminator = tiny_pbnet().eval(), PatchDiscriminator1D(state_dim=6).eval()
        losses = pbnet_loss(pbnet, discriminator, states, audio, lengths, kl_weight_value=0.0,
                            adversarial_update=update, generator=torch.Generator().manual_seed(3))
        # Known answer: BCE with logits of the discriminator on the (masked) real and fake sequences.
        valid = (torch.arange(30)[None, :] < lengths[:, None]).float()[..., None]
        fake_logits = discriminator((losses.prediction + states[:, :1]) * valid)
        real_logits = discriminator(states * valid)
        bce = torch.nn.functional.binary_cross_entropy_with_logits
        torch.testing.assert_close(losses.generator_adversarial, bce(fake_logits, torch.ones_like(fake_logits)))
        torch.testing.assert_close(
            losses.discriminator,
            bce(real_logits, torch.ones_like(real_logits)) + bce(fake_logits, torch.zeros_like(fake_logits)),
        )
        # The discriminator's loss reaches PBNet only in the official single-backward update.
        losses.discriminator.backward()
        reached = any(parameter.grad is not None and parameter.grad.abs().sum() > 0 for parameter in pbnet.parameters())
        assert reached == (update == "official")


# -- data -------------------------------------------------------------------------------------------------------------
def test_windows_are_reproducible_slices_of_the_video(tiny_dataset):
    dataset = load_dawn_dataset(tiny_dataset)
    sequences = PBNetSequenceDataset(dataset, "blink", window=30)
    sample = sequences[(1, 11)]
    start = int(np.random.default_rng(11).integers(0, TINY_DATASET_FRAMES - 30 + 1))
    np.testing.assert_array_equal(sample["states"].numpy(), np.asarray(dataset[1]["eye_ratios"])[start : start + 30])
    np.testing.assert_array_equal(sample["audio_features"].numpy(), np.asarray(dataset[1]["hubert"])[start : start + 30])
    torch.testing.assert_close(sequences[(1, 11)]["states"], sample["states"])
    whole = PBNetSequenceDataset(dataset, "pose")[(0, 5)]  # shorter than the 200-frame window: the whole video
    np.testing.assert_array_equal(whole["states"].numpy(), np.asarray(dataset[0]["pose"]))
    with pytest.raises(ValueError, match="'pose' or 'blink'"):
        PBNetSequenceDataset(dataset, "gaze")


def test_collate_pads_with_zeros_and_records_lengths():
    samples = [{"states": torch.ones(5, 2), "audio_features": torch.ones(5, 3)},
               {"states": torch.ones(3, 2) * 2, "audio_features": torch.ones(3, 3)}]
    batch = collate_sequences(samples)
    assert batch["lengths"].tolist() == [5, 3] and batch["states"].shape == (2, 5, 2)
    assert batch["states"][1, 3:].abs().sum() == 0 and batch["audio_features"][1, 3:].abs().sum() == 0
    assert (batch["states"][1, :3] == 2).all()


# -- learning ---------------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("state", ["pose", "blink"])
def test_overfits_one_fixed_batch(state):
    generator = torch.Generator().manual_seed(4)
    dim = 6 if state == "pose" else 2
    # A smooth random trajectory per sequence, as poses and eye ratios are.
    steps = torch.randn(2, 40, dim, generator=generator).cumsum(1) * 0.02
    states = 0.5 + steps
    audio = torch.randn(2, 40, TINY_HUBERT_DIM, generator=generator)
    lengths = torch.tensor([40, 32])
    pbnet, discriminator = tiny_pbnet(state), PatchDiscriminator1D(state_dim=dim)
    pbnet.train()
    optimizer = torch.optim.AdamW(list(pbnet.parameters()) + list(discriminator.parameters()), lr=2e-3)
    reconstructions, totals = [], []
    for _ in range(40):
        losses = pbnet_loss(pbnet, discriminator, states, audio, lengths, kl_weight_value=0.004,
                            generator=torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        losses.loss.backward()
        torch.nn.utils.clip_grad_norm_(pbnet.parameters(), 2.0)
        optimizer.step()
        reconstructions.append(losses.reconstruction.item())
        totals.append((losses.reconstruction + 0.004 * losses.kl).item())
    assert min(totals[-5:]) < 0.5 * totals[0], totals
    assert min(reconstructions[-5:]) < 0.5 * reconstructions[0], reconstructions


# -- the training run -------------------------------------------------------------------------------------------------
def _script_args(state, dataset, output_dir, config_path, max_steps, *extra):
    """The command line of `training/train_pbnet.py` for a tiny run (used where the launcher itself is tested)."""
    return [
        "--state", state, "--dataset_name_or_path", str(dataset), "--output_dir", str(output_dir),
        "--pbnet_config", str(config_path), "--max_train_steps", str(max_steps), "--learning_rate", "1e-3",
        "--report_to", "none", "--seed", "3", *extra,
    ]


def _config(state, dataset, output_dir, config_path, max_steps, **overrides) -> PBNetTrainingConfig:
    settings = dict(
        state=state, dataset_name_or_path=str(dataset), output_dir=str(output_dir), pbnet_config=str(config_path),
        max_train_steps=max_steps, learning_rate=1e-3, report_to="none", seed=3,
    )
    settings.update(overrides)
    return PBNetTrainingConfig(**settings)


@pytest.mark.parametrize(
    "state, options, checkpoint_step",
    [
        # pose: batch 1 with 2 accumulated micro-batches (1 optimiser step per epoch), EMA, KL warm-up over epochs 2-4.
        ("pose", dict(train_batch_size=1, gradient_accumulation_steps=2, use_ema=True, kl_schedule="linear_warmup",
                      kl_start_epoch=2, kl_ramp_epochs=2, checkpointing_steps=2, validation_steps=4), 2),
        # blink: 30-frame windows, batch 1 (2 steps per epoch), resumed from the middle of an epoch; a fitted prior.
        ("blink", dict(train_batch_size=1, window_frames=30, checkpointing_steps=3, fit_latent_prior=True), 3),
    ],
)
@pytest.mark.slow
def test_training_checkpoints_and_resumes_exactly(tiny_dataset, tmp_path, state, options, checkpoint_step):
    config = dict(TINY_PBNET_CONFIG)
    if state == "blink":
        config.update(state_dim=2, state_min=None, state_max=None)
    config_path = tmp_path / "tiny_pbnet.json"
    config_path.write_text(json.dumps(config))
    total = 4 if state == "pose" else 5

    full = train_pbnet(_config(state, tiny_dataset, tmp_path / "full", config_path, total, **options))
    assert full.global_step == total and len(full.history) == total
    assert all(np.isfinite(step["loss"]) and step["discriminator"] > 0 for step in full.history)
    checkpoint = tmp_path / "full" / f"checkpoint-{checkpoint_step}"
    assert (checkpoint / f"pbnet_{state}" / "diffusion_pytorch_model.safetensors").is_file()
    assert (checkpoint / "discriminator" / "diffusion_pytorch_model.safetensors").is_file()
    if state == "pose":
        # Epochs are 1-based in the schedule; epoch k is optimiser step k here.
        assert [step["kl_weight"] for step in full.history] == pytest.approx([0.0, 0.0, 0.002, 0.004])
        report = json.loads((tmp_path / "full" / "validation" / "step-000004.json").read_text())
        assert report["finite"] and report["frames"] == TINY_DATASET_FRAMES
        assert (checkpoint / f"pbnet_{state}_ema").is_dir()
    trained = PBNetModel.from_pretrained(tmp_path / "full" / f"pbnet_{state}")
    assert trained.config.state_dim == (6 if state == "pose" else 2)
    assert trained.has_latent_prior == options.get("fit_latent_prior", False)
    assert PatchDiscriminator1D.from_pretrained(tmp_path / "full" / "discriminator").config.state_dim == trained.config.state_dim

    shutil.copytree(checkpoint, tmp_path / "resumed" / checkpoint.name)
    resumed = train_pbnet(_config(state, tiny_dataset, tmp_path / "resumed", config_path, total, **options,
                                  resume_from_checkpoint="latest"))
    assert resumed.first_step == checkpoint_step and len(resumed.history) == total - checkpoint_step
    for uninterrupted, continued in zip(full.history[checkpoint_step:], resumed.history):
        for key in ("loss", "reconstruction", "kl", "discriminator"):
            assert continued[key] == pytest.approx(uninterrupted[key], abs=1e-6), key
    final_full = PBNetModel.from_pretrained(tmp_path / "full" / f"pbnet_{state}").state_dict()
    final_resumed = PBNetModel.from_pretrained(tmp_path / "resumed" / f"pbnet_{state}").state_dict()
    for key, value in final_full.items():
        torch.testing.assert_close(final_resumed[key], value, atol=1e-6, rtol=0)


def test_a_run_killed_while_checkpointing_resumes_from_the_last_complete_checkpoint(tiny_dataset, tmp_path, monkeypatch):
    from accelerate import Accelerator

    config_path = tmp_path / "tiny_pbnet.json"
    config_path.write_text(json.dumps(TINY_PBNET_CONFIG))
    options = dict(train_batch_size=1, checkpointing_steps=2, checkpoints_total_limit=1)
    run = tmp_path / "killed"
    save_state = Accelerator.save_state
    saves = []

    def killed_during_the_second_save(self, output_dir=None, **kwargs):
        saves.append(output_dir)
        if len(saves) == 2:  # the process dies with the model file half written
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"half")
            raise KeyboardInterrupt
        return save_state(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", killed_during_the_second_save)
    with pytest.raises(KeyboardInterrupt):
        train_pbnet(_config("pose", tiny_dataset, run, config_path, 6, **options))
    monkeypatch.undo()
    # The limit of one checkpoint removed nothing complete before the new one was: step 2 is there, whole.
    assert [path.name for path in sorted(run.glob("checkpoint-*"))] == ["checkpoint-2"]
    assert (run / "checkpoint-2" / "pbnet_pose" / "diffusion_pytorch_model.safetensors").is_file()

    resumed = train_pbnet(
        _config("pose", tiny_dataset, run, config_path, 6, **options, resume_from_checkpoint="latest")
    )
    assert resumed.first_step == 2 and resumed.global_step == 6
    assert not list(run.glob("*partial*"))  # the half-written save was cleared, not resumed from
    uninterrupted = train_pbnet(_config("pose", tiny_dataset, tmp_path / "full", config_path, 6, **options))
    for key, value in PBNetModel.from_pretrained(tmp_path / "full" / "pbnet_pose").state_dict().items():
        torch.testing.assert_close(PBNetModel.from_pretrained(run / "pbnet_pose").state_dict()[key], value)
    assert uninterrupted.global_step == 6


def test_training_checks_the_model_against_the_state_and_the_data(tiny_dataset, tmp_path):
    config_path = tmp_path / "wrong.json"
    config_path.write_text(json.dumps(dict(TINY_PBNET_CONFIG, audio_dim=7)))
    with pytest.raises(ValueError, match="32-wide"):
        train_pbnet(_config("pose", tiny_dataset, tmp_path / "out", config_path, 1))
    config_path.write_text(json.dumps(dict(TINY_PBNET_CONFIG, state_dim=2, state_min=None, state_max=None)))
    with pytest.raises(ValueError, match="state_dim 6"):
        train_pbnet(_config("pose", tiny_dataset, tmp_path / "out", config_path, 1))
    with pytest.raises(ValueError, match="at least 24"):
        _config("pose", tiny_dataset, tmp_path / "out", config_path, 1, window_frames=10)


@pytest.mark.slow
def test_training_pushes_the_trained_model_to_the_hub(tiny_dataset, tmp_path):
    from hub_server import HubServer

    config_path = tmp_path / "tiny_pbnet.json"
    config_path.write_text(json.dumps(TINY_PBNET_CONFIG))
    output = tmp_path / "pose-run"
    with HubServer() as hub, hub.activate():
        train_pbnet(_config("pose", tiny_dataset, output, config_path, 2, checkpointing_steps=1, push_to_hub=True,
                            hub_model_id="dawn-tester/pbnet-pose"))
        files = hub.files("dawn-tester/pbnet-pose")
        downloaded = PBNetModel.from_pretrained("dawn-tester/pbnet-pose", subfolder="pbnet_pose",
                                                cache_dir=tmp_path / "cache")
    # The model, the discriminator and a card; no checkpoints.
    assert "pbnet_pose/diffusion_pytorch_model.safetensors" in files
    assert "discriminator/config.json" in files and "README.md" in files
    assert not any(name.startswith("checkpoint-") for name in files)
    assert "pbnet" in files["README.md"].decode()
    local = PBNetModel.from_pretrained(output / "pbnet_pose").state_dict()
    for key, value in downloaded.state_dict().items():
        assert torch.equal(value, local[key]), key


@pytest.mark.slow
def test_script_runs_under_accelerate_launch_with_bf16(tiny_dataset, tmp_path):
    import subprocess
    import sys

    from _training_utils import REPO_ROOT

    config_path = tmp_path / "tiny_pbnet.json"
    config_path.write_text(json.dumps(TINY_PBNET_CONFIG))
    output = tmp_path / "bf16"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1", "--cpu",
        "--mixed_precision", "bf16", "--dynamo_backend", "no", str(REPO_ROOT / "training" / "train_pbnet.py"),
        *_script_args("pose", tiny_dataset, output, config_path, 2, "--checkpointing_steps", "2"),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert (output / "checkpoint-2" / "pbnet_pose" / "diffusion_pytorch_model.safetensors").is_file()
    trained = PBNetModel.from_pretrained(output / "pbnet_pose")
    assert all(torch.isfinite(value).all() for value in trained.state_dict().values())


# -- the fitted latent prior ----------------------------------------------------------------------------------------
def _with_prior(pbnet: PBNetModel, mean, scale_tril, correlation) -> PBNetModel:
    return PBNetModel.from_config(
        pbnet.config, latent_prior_mean=mean, latent_prior_scale_tril=scale_tril, latent_prior_correlation=correlation
    )


def test_without_a_fitted_prior_sampling_is_the_official_white_noise():
    pbnet = tiny_pbnet().eval()
    noise = torch.randn(2, 5, TINY_PBNET_CONFIG["latent_dim"])
    assert not pbnet.has_latent_prior and pbnet.apply_latent_prior(noise) is noise


def test_fitted_prior_draws_have_its_mean_covariance_and_correlation():
    dim = TINY_PBNET_CONFIG["latent_dim"]
    generator = torch.Generator().manual_seed(0)
    factor = torch.randn(dim, dim, generator=generator)
    scale_tril = torch.linalg.cholesky(factor @ factor.T / dim + torch.eye(dim))
    mean = torch.linspace(-1, 1, dim)
    correlation = torch.linspace(0.0, 0.95, dim)
    pbnet = _with_prior(tiny_pbnet(), mean.tolist(), scale_tril.tolist(), correlation.tolist())
    # Strongly correlated channels (ρ up to 0.95) need many frames for their mean to settle: 256 × 400.
    draws = pbnet.apply_latent_prior(torch.randn(256, 400, dim, generator=generator))
    flat = draws.reshape(-1, dim)
    torch.testing.assert_close(flat.mean(0), mean, atol=0.15, rtol=0)
    torch.testing.assert_close(torch.cov(flat.T), scale_tril @ scale_tril.T, atol=0.2, rtol=0.1)
    whitened = torch.linalg.solve_triangular(scale_tril, (draws - mean).reshape(-1, dim).T, upper=False).T
    whitened = whitened.reshape(draws.shape)
    lag_one = (whitened[:, 1:] * whitened[:, :-1]).mean((0, 1)) / whitened.var((0, 1))
    torch.testing.assert_close(lag_one, correlation, atol=0.03, rtol=0)


def test_fitted_prior_quantiles_give_each_channel_its_marginal():
    dim = TINY_PBNET_CONFIG["latent_dim"]
    levels = (torch.arange(32) + 0.5) / 32
    # Channel d follows an exponential distribution of rate d + 1 (skewed, heavy right tail), shifted to mean 0.
    rates = torch.arange(1, dim + 1).float()
    table = -torch.log1p(-levels)[:, None] / rates - 1 / rates
    pbnet = PBNetModel.from_config(
        tiny_pbnet().config,
        latent_prior_mean=[0.0] * dim,
        latent_prior_scale_tril=torch.eye(dim).tolist(),
        latent_prior_correlation=[0.5] * dim,
        latent_prior_quantiles=table.tolist(),
    )
    draws = pbnet.apply_latent_prior(torch.randn(64, 500, dim, generator=torch.Generator().manual_seed(1)))
    measured = torch.quantile(draws.reshape(-1, dim), levels[4:-4], dim=0)
    torch.testing.assert_close(measured, table[4:-4], atol=0.03, rtol=0.05)


def test_prior_config_must_be_complete_and_consistent():
    dim = TINY_PBNET_CONFIG["latent_dim"]
    identity = torch.eye(dim).tolist()
    with pytest.raises(ValueError, match="give all of"):
        _with_prior(tiny_pbnet(), [0.0] * dim, None, None)
    with pytest.raises(ValueError, match="shapes"):
        _with_prior(tiny_pbnet(), [0.0] * (dim + 1), identity, [0.5] * dim)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        _with_prior(tiny_pbnet(), [0.0] * dim, identity, [1.0] * dim)
    with pytest.raises(ValueError, match="non-decreasing"):
        PBNetModel.from_config(
            tiny_pbnet().config, latent_prior_mean=[0.0] * dim, latent_prior_scale_tril=identity,
            latent_prior_correlation=[0.5] * dim, latent_prior_quantiles=[[1.0] * dim, [0.0] * dim],
        )


def test_fit_latent_prior_whitens_the_posterior_means_and_survives_save(tiny_dataset, tmp_path):
    from diffusers_dawn.training.pbnet_trainer import fit_latent_prior

    dataset = load_dawn_dataset(tiny_dataset)
    pbnet = tiny_pbnet("blink").eval()
    prior = fit_latent_prior(pbnet, dataset, "blink", window=16)
    assert pbnet.has_latent_prior and pbnet.config.latent_prior_mean == prior["latent_prior_mean"]
    # Recompute the posterior means window by window, as the fit sees them.
    means = []
    with torch.no_grad():
        for row in dataset.with_format("numpy"):
            states = torch.as_tensor(np.asarray(row["eye_ratios"], dtype=np.float32))
            audio = torch.as_tensor(np.asarray(row["hubert"], dtype=np.float32))
            for start in range(0, len(states), 16):
                if len(states[start : start + 16]) >= 2:
                    means.append(pbnet(states[None, start : start + 16], audio[None, start : start + 16]).mu[0])
    frames = torch.cat(means)
    mean = torch.tensor(prior["latent_prior_mean"])
    scale_tril = torch.tensor(prior["latent_prior_scale_tril"])
    torch.testing.assert_close(mean, frames.mean(0), atol=1e-5, rtol=0)
    whitened = torch.linalg.solve_triangular(scale_tril, (frames - mean).T, upper=False)
    torch.testing.assert_close(torch.cov(whitened), torch.eye(frames.shape[1]), atol=1e-2, rtol=0)
    levels = (torch.arange(64) + 0.5) / 64
    expected_quantiles = torch.quantile(whitened.T.double(), levels.double(), dim=0).float()
    torch.testing.assert_close(torch.tensor(prior["latent_prior_quantiles"]), expected_quantiles, atol=1e-4, rtol=0)
    assert all(0.0 <= value < 1.0 for value in prior["latent_prior_correlation"])

    pbnet.save_pretrained(tmp_path / "fitted")
    loaded = PBNetModel.from_pretrained(tmp_path / "fitted").eval()
    audio = torch.randn(1, 12, TINY_HUBERT_DIM)
    initial = torch.full((1, 1, 2), 0.3)
    sample = pbnet.sample(initial, audio, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(loaded.sample(initial, audio, generator=torch.Generator().manual_seed(3)), sample)
    # The prior shapes the draws: the same noise decoded without it gives another sequence.
    official = tiny_pbnet("blink").eval().sample(initial, audio, generator=torch.Generator().manual_seed(3))
    assert not torch.allclose(official, sample)
