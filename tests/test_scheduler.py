"""DAWNDDIMScheduler against the official DDIM fixture, and its interplay with the diffusers schedulers."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, UniPCMultistepScheduler
from safetensors.torch import load_file

from diffusers_dawn.conversion.unet import convert_unet_checkpoint
from diffusers_dawn.schedulers import DAWNDDIMScheduler
from diffusers_dawn.schedulers.scheduling_dawn_ddim import dynamic_threshold, linear_quantile


@pytest.fixture(scope="module")
def ddim_io(fixtures_dir):
    return load_file(fixtures_dir / "fdm_tiny_ddim_io.safetensors")


def test_schedule_buffers_equal_the_official_ones(ddim_io):
    scheduler = DAWNDDIMScheduler()
    # float64 cosines may differ in the last bit between CPU math libraries (4 of 1000 betas, by 2.2e-16).
    torch.testing.assert_close(torch.tensor(scheduler.config.trained_betas, dtype=torch.float64),
                               ddim_io["schedule.betas_float64"], atol=1e-15, rtol=0)
    for name in ["betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_recip_alphas_cumprod",
                 "sqrt_recipm1_alphas_cumprod"]:
        torch.testing.assert_close(getattr(scheduler, name), ddim_io[f"schedule.{name}"], atol=0, rtol=0)


def test_official_timesteps_and_generalisation(ddim_io):
    scheduler = DAWNDDIMScheduler()
    scheduler.set_timesteps(20)
    pairs = ddim_io["schedule.time_pairs"]
    assert scheduler.timesteps.tolist() == pairs[:, 0].tolist()
    assert [scheduler.next_timestep(int(t)) for t in scheduler.timesteps] == pairs[:, 1].tolist()
    scheduler.set_timesteps(4)
    # int(linspace(0, 1000, 6)[:-1]) reversed: 800, 600, 400, 200 → 0.
    assert scheduler.timesteps.tolist() == [800, 600, 400, 200]
    with pytest.raises(ValueError, match="num_inference_steps"):
        scheduler.set_timesteps(0)


def test_replaying_the_recorded_eps_and_noise_reproduces_the_official_trajectory(ddim_io):
    scheduler = DAWNDDIMScheduler()
    scheduler.set_timesteps(20)
    sample = ddim_io["in.init_noise"] * scheduler.init_noise_sigma
    for index, timestep in enumerate(scheduler.timesteps):
        assert int(timestep) == int(ddim_io["trace.t"][index])
        torch.testing.assert_close(sample, ddim_io["trace.x_t"][index], atol=1e-5, rtol=1e-5)
        noise = ddim_io["in.step_noise"][index] if index < 19 else None
        sample = scheduler.step(ddim_io["trace.eps"][index], timestep, sample, variance_noise=noise).prev_sample
    torch.testing.assert_close(sample, ddim_io["out.sample"], atol=1e-6, rtol=0)
    # The last step lands on the thresholded x̂₀, which lies in [-1, 1].
    assert sample.abs().max() <= 1.0


def test_full_sampling_loop_with_the_converted_tiny_unet(ddim_io, fixtures_dir):
    unet = convert_unet_checkpoint(
        load_file(fixtures_dir / "fdm_tiny_diffusion_weights.safetensors"),
        face_location_state_dict=load_file(fixtures_dir / "fdm_tiny_face_loc_emb_weights.safetensors"),
    )
    scheduler = DAWNDDIMScheduler()
    scheduler.set_timesteps(20)
    sample = ddim_io["in.init_noise"]
    for index, timestep in enumerate(scheduler.timesteps):
        with torch.no_grad():
            eps = unet(sample, timestep.reshape(1), ddim_io["in.cond"], source_latent=ddim_io["in.fea"],
                       face_location_features=ddim_io["in.bbox_mask_feat"]).sample
        torch.testing.assert_close(eps, ddim_io["trace.eps"][index], atol=4e-5, rtol=1e-5)
        noise = ddim_io["in.step_noise"][index] if index < 19 else None
        sample = scheduler.step(eps, timestep, sample, variance_noise=noise).prev_sample
    torch.testing.assert_close(sample, ddim_io["out.sample"], atol=1e-4, rtol=0)


def test_generator_noise_is_the_recorded_draw_order():
    # The official sampler draws x_T then one randn per step except the last; a seeded generator must give the same
    # numbers when the scheduler draws them.
    scheduler = DAWNDDIMScheduler()
    scheduler.set_timesteps(3)
    shape = (1, 3, 2, 4, 4)
    generator = torch.Generator().manual_seed(7)
    sample = torch.randn(shape, generator=generator)
    eps = torch.zeros(shape)
    for timestep in scheduler.timesteps:
        sample = scheduler.step(eps, timestep, sample, generator=generator).prev_sample

    reference = torch.Generator().manual_seed(7)
    expected_sample = torch.randn(shape, generator=reference)
    replay = DAWNDDIMScheduler()
    replay.set_timesteps(3)
    for index, timestep in enumerate(replay.timesteps):
        noise = torch.randn(shape, generator=reference) if index < 2 else None
        expected_sample = replay.step(eps, timestep, expected_sample, variance_noise=noise).prev_sample
    torch.testing.assert_close(sample, expected_sample, atol=0, rtol=0)


def test_linear_quantile_matches_torch_quantile_and_has_no_size_limit():
    generator = torch.Generator().manual_seed(0)
    for count in [1, 2, 7, 11, 1536, 10001]:
        values = torch.randn(3, count, generator=generator).abs()
        for q in [0.0, 0.5, 0.9, 1.0]:
            torch.testing.assert_close(linear_quantile(values, q), torch.quantile(values, q, dim=-1), atol=0, rtol=0)
    # torch.quantile refuses more than 2**24 elements; the exact order statistic still works.
    count = 2**24 + 5
    values = torch.arange(count, dtype=torch.float64).flip(0).reshape(1, -1)
    with pytest.raises(RuntimeError):
        torch.quantile(values, 0.9, dim=-1)
    expected = 0.9 * (count - 1)
    assert linear_quantile(values, 0.9).item() == pytest.approx(expected, abs=1e-6)


def test_dynamic_threshold_per_sample():
    sample = torch.stack([torch.linspace(-0.5, 0.5, 100), torch.linspace(-4, 4, 100)]).reshape(2, 1, 100)
    thresholded = dynamic_threshold(sample)
    # Sample 0 is within [-1, 1]: the floor s = 1 leaves it untouched.
    torch.testing.assert_close(thresholded[0], sample[0])
    scale = torch.quantile(sample[1].abs().flatten(), 0.9)
    torch.testing.assert_close(thresholded[1], sample[1].clamp(-scale, scale) / scale)
    assert thresholded[1].abs().max() == 1.0


def test_threshold_sample_follows_the_config_and_is_what_step_applies():
    scheduler = DAWNDDIMScheduler(dynamic_thresholding_ratio=0.5, sample_min_threshold=2.0)
    values = torch.arange(1.0, 11.0)
    sample = torch.stack([values, values / 10]).reshape(2, 10, 1)
    thresholded = scheduler.threshold_sample(sample)
    # Sample 0: the 0.5-quantile of 1..10 is 5.5 (above the floor 2); sample 1 stays under the floor, so s = 2.
    torch.testing.assert_close(thresholded[0].flatten(), values.clamp(max=5.5) / 5.5)
    torch.testing.assert_close(thresholded[1].flatten(), values / 10 / 2)
    # One sampling step returns the thresholded x̂₀ of the unthresholded prediction.
    scheduler.set_timesteps(2)
    shape = (2, 3, 2, 4, 4)
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(3)) * 3
    eps = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    timestep = scheduler.timesteps[0]
    output = scheduler.step(eps, timestep, latents, generator=torch.Generator().manual_seed(5))
    expected = scheduler.threshold_sample(scheduler.predict_original_sample(eps, timestep, latents))
    torch.testing.assert_close(output.pred_original_sample, expected, atol=0, rtol=0)


def test_off_by_one_flag_changes_the_renoising_only():
    shape = (1, 3, 2, 4, 4)
    sample = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    eps = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    outputs = {}
    for flag in (True, False):
        scheduler = DAWNDDIMScheduler(renoise_with_previous_alphas=flag, eta=0.0)
        scheduler.set_timesteps(5)
        outputs[flag] = scheduler.step(eps, scheduler.timesteps[0], sample)
    torch.testing.assert_close(outputs[True].pred_original_sample, outputs[False].pred_original_sample)
    assert not torch.allclose(outputs[True].prev_sample, outputs[False].prev_sample)


def test_step_errors():
    scheduler = DAWNDDIMScheduler()
    with pytest.raises(ValueError, match="set_timesteps"):
        scheduler.step(torch.zeros(1), 952, torch.zeros(1))
    scheduler.set_timesteps(20)
    with pytest.raises(ValueError, match="not in this scheduler"):
        scheduler.step(torch.zeros(1), 951, torch.zeros(1))
    with pytest.raises(ValueError, match="epsilon"):
        DAWNDDIMScheduler(prediction_type="v_prediction")


@pytest.mark.parametrize(
    "scheduler_class", [DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, UniPCMultistepScheduler]
)
def test_diffusers_schedulers_built_from_the_config_see_dawns_schedule(scheduler_class):
    dawn = DAWNDDIMScheduler()
    other = scheduler_class.from_config(dawn.config)
    torch.testing.assert_close(other.betas, dawn.betas, atol=0, rtol=0)
    # diffusers takes the cumulative product in float32; DAWN in float64 (differences below 3e-7).
    torch.testing.assert_close(other.alphas_cumprod, dawn.alphas_cumprod, atol=5e-7, rtol=1e-6)
    back = DAWNDDIMScheduler.from_config(other.config)
    torch.testing.assert_close(back.alphas_cumprod, dawn.alphas_cumprod, atol=0, rtol=0)


def test_save_and_load_round_trip(tmp_path):
    scheduler = DAWNDDIMScheduler(eta=0.5)
    scheduler.save_pretrained(tmp_path)
    loaded = DAWNDDIMScheduler.from_pretrained(tmp_path)
    assert loaded.config.eta == 0.5
    torch.testing.assert_close(loaded.alphas_cumprod, scheduler.alphas_cumprod, atol=0, rtol=0)


def test_add_noise_is_the_forward_process():
    scheduler = DAWNDDIMScheduler()
    original = torch.randn(2, 3, 4)
    noise = torch.randn(2, 3, 4)
    timesteps = torch.tensor([0, 999])
    noisy = scheduler.add_noise(original, noise, timesteps)
    for index, t in enumerate(timesteps):
        alpha = scheduler.alphas_cumprod[t]
        torch.testing.assert_close(noisy[index], alpha.sqrt() * original[index] + (1 - alpha).sqrt() * noise[index])
    assert np.isclose(scheduler.alphas_cumprod[999].item(), 0.0, atol=1e-6)



def test_predicted_original_inverts_add_noise_per_sample():
    # Training takes x̂₀ from this method: given the true noise it must give back the clean sample at every t.
    scheduler = DAWNDDIMScheduler()
    original = torch.randn(3, 3, 2, 4, 4)
    noise = torch.randn_like(original)
    timesteps = torch.tensor([0, 500, 990])
    noisy = scheduler.add_noise(original, noise, timesteps)
    recovered = scheduler.predict_original_sample(noise, timesteps, noisy)
    torch.testing.assert_close(recovered[:2], original[:2], atol=1e-4, rtol=0)
    torch.testing.assert_close(recovered[2], original[2], atol=5e-3, rtol=0)  # ᾱ is tiny near T

@pytest.mark.parametrize(
    "scheduler_class", [DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, UniPCMultistepScheduler]
)
def test_swapping_the_scheduler_of_a_loaded_pipeline_passes_no_unknown_option(scheduler_class, tmp_path):
    # A loaded config names every option; `from_config` warns about each one the target class does not take.
    DAWNDDIMScheduler().save_pretrained(tmp_path)
    loaded = DAWNDDIMScheduler.from_pretrained(tmp_path)
    _, unused, _ = scheduler_class.extract_init_dict(dict(loaded.config))
    assert unused == {}
    other = scheduler_class.from_config(loaded.config)
    torch.testing.assert_close(other.betas, loaded.betas, atol=0, rtol=0)
    # A DAWN option away from its default is not hidden: the other scheduler would ignore it, and says so.
    DAWNDDIMScheduler(eta=0.5).save_pretrained(tmp_path / "eta")
    _, unused, _ = scheduler_class.extract_init_dict(dict(DAWNDDIMScheduler.from_pretrained(tmp_path / "eta").config))
    assert unused == {"eta": 0.5}
    assert DAWNDDIMScheduler.from_config(DAWNDDIMScheduler(eta=0.5, max_beta=0.5).config).config.max_beta == 0.5
