"""diffusers interop: the kinetic scheduler's per-sample KPE equals our sampler's on the same velocities.

Everything runs on a tiny randomly initialised SD3 transformer built here (no download).
"""
from __future__ import annotations

import inspect
import re

import numpy as np
import pytest
import torch

import kinetic_fm as kfm
from kinetic_fm.fields.adapters import ModelXT, ReversedTime
from kinetic_fm.fields.guidance import ClassifierFreeGuidance

diffusers = pytest.importorskip("diffusers")
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel  # noqa: E402

from kinetic_fm.integrations.diffusers import KineticFlowMatchEulerScheduler  # noqa: E402

BATCH, CHANNELS, SIZE, TOKENS, JOINT, POOLED = 3, 4, 8, 5, 16, 8
KTS = kfm.KTS(alpha0=0.1, beta0=0.02)


@pytest.fixture(scope="module")
def transformer():
    torch.manual_seed(0)
    model = SD3Transformer2DModel(
        sample_size=SIZE, patch_size=1, in_channels=CHANNELS, out_channels=CHANNELS, num_layers=1,
        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=JOINT,
        caption_projection_dim=16, pooled_projection_dim=POOLED,
    ).eval()
    return model


@pytest.fixture(scope="module")
def conditions():
    g = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, TOKENS, JOINT, generator=g), torch.randn(BATCH, POOLED, generator=g)


def _x0() -> torch.Tensor:
    return kfm.noise(list(range(BATCH)), (CHANNELS, SIZE, SIZE))


def _sigma_net(transformer, prompt, pooled):
    """The transformer as ``net(x, timestep)`` in its own clock (timestep = 1000σ, output dx/dσ)."""

    def net(x, timestep):
        with torch.no_grad():
            return transformer(
                hidden_states=x, timestep=timestep, encoder_hidden_states=prompt,
                pooled_projections=pooled, return_dict=False,
            )[0]

    return net


def _scheduler_loop(scheduler, transformer, conditions, x0, steps=8):
    """A hand-written diffusers sampling loop; also sums ½‖model_output‖²Δσ·η² directly."""
    net = _sigma_net(transformer, *conditions)
    scheduler.set_timesteps(steps)
    sigmas = scheduler.sigmas.double()
    shaping = getattr(scheduler, "shaping", None)
    x, direct = x0.clone(), torch.zeros(x0.shape[0], dtype=torch.float64)
    for i, t in enumerate(scheduler.timesteps):
        out = net(x, t.expand(x.shape[0]))
        eta = 1.0 if shaping is None else shaping(1.0 - float(sigmas[i]))
        direct += 0.5 * eta**2 * out.double().pow(2).flatten(1).sum(1) * (sigmas[i] - sigmas[i + 1])
        x = scheduler.step(out, t, x, return_dict=False)[0]
    return x, direct


@pytest.mark.parametrize("shaping", [None, KTS], ids=["plain", "kts"])
def test_scheduler_kpe_equals_our_sampler_on_the_same_velocities(transformer, conditions, shaping):
    scheduler = KineticFlowMatchEulerScheduler(shift=3.0)
    scheduler.set_shaping(shaping)
    x0 = _x0()
    x, direct = _scheduler_loop(scheduler, transformer, conditions, x0)
    torch.testing.assert_close(scheduler.kpe, direct, rtol=1e-6, atol=0)
    torch.testing.assert_close(scheduler.profile.sum(1), scheduler.kpe, rtol=1e-12, atol=0)

    grid = 1.0 - scheduler.sigmas.double()  # FM times t_i = 1 − σ_i of the shifted schedule
    torch.testing.assert_close(scheduler.times, grid)
    velocity = ReversedTime(ModelXT(_sigma_net(transformer, *conditions)))
    ours = kfm.sample(velocity, x0, grid=grid, solver="euler", quadrature="left", shaping=shaping, profile=True)
    torch.testing.assert_close(scheduler.kpe, ours.kpe, rtol=1e-5, atol=0)
    torch.testing.assert_close(scheduler.kpe_raw, ours.kpe_raw, rtol=1e-5, atol=0)
    torch.testing.assert_close(scheduler.profile, ours.profile, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(x, ours.x, rtol=1e-5, atol=1e-5)
    if shaping is None:
        torch.testing.assert_close(scheduler.kpe, scheduler.kpe_raw, rtol=0, atol=0)
    else:
        assert not torch.allclose(scheduler.kpe, scheduler.kpe_raw, rtol=1e-4)


def test_without_shaping_the_samples_are_the_base_schedulers(transformer, conditions):
    x0 = _x0()
    base, _ = _scheduler_loop(FlowMatchEulerDiscreteScheduler(shift=3.0), transformer, conditions, x0)
    kinetic, _ = _scheduler_loop(KineticFlowMatchEulerScheduler(shift=3.0), transformer, conditions, x0)
    torch.testing.assert_close(kinetic, base, rtol=0, atol=0)


def test_forgetting_the_reversed_clock_is_caught(transformer, conditions):
    scheduler = KineticFlowMatchEulerScheduler(shift=3.0)
    x0 = _x0()
    x, _ = _scheduler_loop(scheduler, transformer, conditions, x0)
    grid = scheduler.times
    wrong = kfm.sample(ModelXT(_sigma_net(transformer, *conditions)), x0, grid=grid, quadrature="left")
    assert not torch.allclose(wrong.x, x, rtol=1e-2, atol=1e-2)


def test_custom_and_dynamic_sigmas_are_read_not_recomputed(transformer, conditions):
    scheduler = KineticFlowMatchEulerScheduler(use_dynamic_shifting=True)
    scheduler.set_timesteps(6, mu=0.8)
    dynamic = 1.0 - scheduler.sigmas.double()
    x0 = _x0()
    net = _sigma_net(transformer, *conditions)
    x = x0
    for t in scheduler.timesteps:
        x = scheduler.step(net(x, t.expand(BATCH)), t, x, return_dict=False)[0]
    torch.testing.assert_close(scheduler.times, dynamic)
    ours = kfm.sample(ReversedTime(ModelXT(net)), x0, grid=dynamic, quadrature="left")
    torch.testing.assert_close(scheduler.kpe, ours.kpe, rtol=1e-5, atol=0)


def test_a_grid_point_a_float32_rounding_off_tau_takes_our_samplers_gain(transformer, conditions):
    # FLUX.1-schnell's σ grid linspace(1, 0.1, 10) in float32 puts t = 0.5999999940 for τ = 0.6:
    # the scheduler took the launch gain there, kfm.sample (which counts it as τ) the landing one,
    # KPE 3 % apart with constant forms (helper-105)
    import numpy as np

    kts = kfm.KTS(alpha0=0.1, beta0=0.05, launch="constant", landing="constant")
    scheduler = KineticFlowMatchEulerScheduler(shift=1.0)
    scheduler.set_shaping(kts)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.1, 10))
    x0 = _x0()
    net = _sigma_net(transformer, *conditions)
    x = x0
    for t in scheduler.timesteps:
        x = scheduler.step(net(x, t.expand(BATCH)), t, x, return_dict=False)[0]
    assert 0 < abs(float(scheduler.times[6]) - 0.6) < 1e-7                  # σ = float32(0.4)
    ours = kfm.sample(ReversedTime(ModelXT(net)), x0, grid=scheduler.times, quadrature="left", shaping=kts)
    torch.testing.assert_close(scheduler.kpe, ours.kpe, rtol=1e-5, atol=0)
    torch.testing.assert_close(x, ours.x, rtol=1e-5, atol=1e-5)


def test_a_step_that_fails_adds_no_energy_and_a_mismatched_output_is_named(transformer, conditions):
    # the energy was added before the base step ran: a step that raised, then its retry, counted
    # twice (KPE 5.5 % high, no longer the profile's sum); a doubled CFG batch met a raw shape error
    scheduler = KineticFlowMatchEulerScheduler(shift=3.0)
    scheduler.set_timesteps(4)
    x0 = _x0()
    net = _sigma_net(transformer, *conditions)
    t = scheduler.timesteps[0]
    out = net(x0, t.expand(BATCH))
    with pytest.raises(ValueError, match=r"model_output has 6 rows but sample has 3"):
        scheduler.step(torch.cat([out, out]), t, x0, return_dict=False)
    with pytest.raises(Exception):
        scheduler.step(out[..., :-1], t, x0, return_dict=False)            # the base step's own error
    x = scheduler.step(out, t, x0, return_dict=False)[0]
    for t in scheduler.timesteps[1:]:
        x = scheduler.step(net(x, t.expand(BATCH)), t, x, return_dict=False)[0]
    torch.testing.assert_close(scheduler.profile.sum(1), scheduler.kpe, rtol=1e-12, atol=0)
    ours = kfm.sample(ReversedTime(ModelXT(net)), x0, grid=scheduler.times, quadrature="left")
    torch.testing.assert_close(scheduler.kpe, ours.kpe, rtol=1e-5, atol=0)


@pytest.mark.parametrize("integer", [3, torch.tensor(1000), torch.tensor(1000, dtype=torch.int16)])
def test_an_integer_timestep_is_refused_before_anything_is_stepped(integer):
    # the base class refuses int and CPU int32/int64 tensors only: an int16 timestep (or, on a GPU, an
    # int64 one, which is no torch.LongTensor) was stepped by the base class with no energy added
    scheduler = KineticFlowMatchEulerScheduler()
    scheduler.set_timesteps(4)
    x = torch.ones(2, 3)
    with pytest.raises(ValueError, match=r"integer indices .* pass one of scheduler.timesteps as it is"):
        scheduler.step(-x, integer, x)
    assert scheduler.step_index is None and scheduler.kpe is None
    scheduler.step(-x, scheduler.timesteps[0], x)
    step = float(scheduler.sigmas[0].double() - scheduler.sigmas[1].double())
    torch.testing.assert_close(scheduler.kpe, torch.full((2,), 0.5 * 3 * step, dtype=torch.float64))    # ½‖v‖²Δt


def test_a_non_finite_model_output_flags_that_image_at_its_first_step():
    # a NaN output gave NaN energies with no flag: ARCHITECTURE's "never a silent NaN" (helper-132);
    # the pipeline itself is not stopped, as kfm.sample(on_nonfinite="flag") goes on
    scheduler = KineticFlowMatchEulerScheduler(shift=3.0)
    scheduler.set_timesteps(5)
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    for i, t in enumerate(scheduler.timesteps):
        out = x.clone()
        if i >= 2:
            out[1, 0, 0, 0] = torch.nan                     # image 1 from step 2 on
        if i == 3:
            out[2, 1, 1, 1] = torch.inf                     # image 2 at step 3 only
        x = scheduler.step(out, t, x, return_dict=False)[0]
    assert scheduler.nonfinite_step.tolist() == [-1, 2, 3] and scheduler.nonfinite.tolist() == [False, True, True]
    assert torch.isfinite(scheduler.kpe[0]) and torch.isnan(scheduler.kpe[1:]).all()     # inf read inf (helper-135)
    assert torch.isnan(scheduler.kpe_raw[1:]).all() and torch.isnan(scheduler.profile[2, 3])
    scheduler.set_timesteps(5)
    assert scheduler.nonfinite is None and scheduler.nonfinite_step is None


NO_ENCODERS = dict(vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                   text_encoder_3=None, tokenizer_3=None)


def _run_pipeline(pipe, conditions, x0, scale=4.0):
    """Latents of a 6-step guided run of a tiny SD3 pipeline (null condition = zeros)."""
    pipe.set_progress_bar_config(disable=True)
    prompt, pooled = conditions
    null_prompt, null_pooled = torch.zeros_like(prompt[:1]), torch.zeros_like(pooled[:1])
    return pipe(
        prompt_embeds=prompt, pooled_prompt_embeds=pooled,
        negative_prompt_embeds=null_prompt.expand_as(prompt), negative_pooled_prompt_embeds=null_pooled.expand_as(pooled),
        height=SIZE, width=SIZE, num_inference_steps=6, guidance_scale=scale, output_type="latent", latents=x0,
    ).images


def test_pipeline_with_classifier_free_guidance(transformer, conditions):
    """A tiny SD3 pipeline (no text encoders, no VAE): one KPE per image, equal to our CFG sampler's."""
    from diffusers import StableDiffusion3Pipeline

    scheduler = KineticFlowMatchEulerScheduler.from_scheduler(
        FlowMatchEulerDiscreteScheduler(shift=3.0), shaping=KTS
    )
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=scheduler, **NO_ENCODERS)
    prompt, pooled = conditions
    null_prompt, null_pooled = torch.zeros_like(prompt[:1]), torch.zeros_like(pooled[:1])
    x0, scale = _x0(), 4.0
    latents = _run_pipeline(pipe, conditions, x0, scale)
    assert pipe.scheduler.kpe.shape == (BATCH,)

    def net(x, timestep, cond):  # one condition tensor: prompt tokens and pooled vector packed
        tokens = cond[:, : TOKENS * JOINT].reshape(-1, TOKENS, JOINT)
        return _sigma_net(transformer, tokens, cond[:, TOKENS * JOINT :])(x, timestep)

    pack = lambda p, q: torch.cat([p.flatten(1), q], dim=1)  # noqa: E731
    guided = ClassifierFreeGuidance(ReversedTime(ModelXT(net)), pack(prompt, pooled), scale, pack(null_prompt, null_pooled))
    ours = kfm.sample(guided, x0, grid=scheduler.times, shaping=KTS, quadrature="left")
    torch.testing.assert_close(pipe.scheduler.kpe, ours.kpe, rtol=1e-5, atol=0)
    torch.testing.assert_close(latents, ours.x, rtol=1e-5, atol=1e-5)


def test_set_timesteps_resets_and_runs_repeat(transformer, conditions):
    scheduler = KineticFlowMatchEulerScheduler(shift=3.0)
    x0 = _x0()
    _scheduler_loop(scheduler, transformer, conditions, x0)
    first = scheduler.kpe.clone()
    scheduler.set_timesteps(8)
    assert scheduler.kpe is None and scheduler.profile is None
    _scheduler_loop(scheduler, transformer, conditions, x0)
    torch.testing.assert_close(scheduler.kpe, first, rtol=0, atol=0)


def test_unsupported_configurations_raise(transformer, conditions):
    out, x = torch.zeros(BATCH, CHANNELS, SIZE, SIZE), _x0()
    options = inspect.signature(FlowMatchEulerDiscreteScheduler.__init__).parameters
    if "invert_sigmas" in options:                 # both options are newer than diffusers 0.30
        inverted = KineticFlowMatchEulerScheduler(invert_sigmas=True)
        inverted.set_timesteps(4)
        with pytest.raises(ValueError, match="strictly decreasing"):
            inverted.step(out, inverted.timesteps[0], x)
    # sigmas=np.linspace(1, 0, N) ends at 0 and the scheduler appends its own: the repeated pair is
    # named with the fix (the message blamed invert_sigmas and showed the first four σ, all fine)
    ending_at_zero = KineticFlowMatchEulerScheduler()
    ending_at_zero.set_timesteps(sigmas=np.linspace(1.0, 0.0, 5))   # an array: diffusers 0.30 takes no list
    with pytest.raises(ValueError, match=r"σ\[4\] = 0, σ\[5\] = 0: the sigmas given end at 0 .* leave the final 0 out"):
        ending_at_zero.step(out, ending_at_zero.timesteps[0], x)
    with_nan = KineticFlowMatchEulerScheduler()                   # NaN compares False: it was an IndexError
    with_nan.set_timesteps(sigmas=np.array([1.0, np.nan, 0.5]))
    with pytest.raises(ValueError, match=r"σ\[0\] = 1, σ\[1\] = nan: a σ is NaN"):
        with_nan.step(out, with_nan.timesteps[0], x)
    if "stochastic_sampling" in options:
        # refused when built (see below); register_to_config can still set it afterwards
        stochastic = KineticFlowMatchEulerScheduler()
        stochastic.register_to_config(stochastic_sampling=True)
        stochastic.set_timesteps(4)
        with pytest.raises(ValueError, match="stochastic_sampling"):
            stochastic.step(out, stochastic.timesteps[0], x)
    plain = KineticFlowMatchEulerScheduler()
    plain.set_timesteps(4)
    with pytest.raises(ValueError, match="per_token_timesteps"):
        plain.step(out, plain.timesteps[0], x, per_token_timesteps=torch.ones(BATCH, 4))
    if "per_token_timesteps" in inspect.signature(FlowMatchEulerDiscreteScheduler.step).parameters:
        # by position too, as the base binds it (it went through, measured at the scalar step)
        order = list(inspect.signature(FlowMatchEulerDiscreteScheduler.step).parameters)[4:]
        defaults = [inspect.signature(FlowMatchEulerDiscreteScheduler.step).parameters[n].default for n in order]
        positional = [torch.ones(BATCH, 4) if n == "per_token_timesteps" else d for n, d in zip(order, defaults)]
        with pytest.raises(ValueError, match="per_token_timesteps"):
            plain.step(out, plain.timesteps[0], x, *positional[:order.index("per_token_timesteps") + 1])
    with pytest.raises(ValueError, match="integer indices"):
        plain.step(out, 3, x)
    plain.step(out, plain.timesteps[0], x)
    with pytest.raises(ValueError, match="combine classifier-free guidance"):
        plain.step(torch.cat([out, out]), plain.timesteps[1], torch.cat([x, x]))
    with pytest.raises(TypeError, match="shaping must be"):
        plain.set_shaping(0.5)


# --- saving and loading ----------------------------------------------------------------------------

def test_saved_pipeline_reloads_with_its_kts_gain(transformer, conditions, tmp_path):
    from diffusers import StableDiffusion3Pipeline

    scheduler = KineticFlowMatchEulerScheduler.from_scheduler(FlowMatchEulerDiscreteScheduler(shift=3.0), shaping=KTS)
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=scheduler, **NO_ENCODERS)
    x0 = _x0()
    latents = _run_pipeline(pipe, conditions, x0)
    pipe.save_pretrained(tmp_path)

    loaded = StableDiffusion3Pipeline.from_pretrained(tmp_path, image_encoder=None, feature_extractor=None, **NO_ENCODERS)
    assert type(loaded.scheduler) is KineticFlowMatchEulerScheduler
    assert loaded.scheduler.shaping == KTS
    again = _run_pipeline(loaded, conditions, x0)
    torch.testing.assert_close(again, latents, rtol=0, atol=0)
    torch.testing.assert_close(loaded.scheduler.kpe, pipe.scheduler.kpe, rtol=0, atol=0)
    # the README's recipe for a folder that loads without kinetic_fm: the base scheduler goes back first
    import json

    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.save_pretrained(tmp_path / "plain")
    index = json.loads((tmp_path / "plain" / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    assert pipe.scheduler.config.shift == 3.0


def test_scheduler_config_carries_the_gain(tmp_path):
    scheduler = KineticFlowMatchEulerScheduler(shift=2.0)
    scheduler.set_shaping(KTS)
    scheduler.save_pretrained(tmp_path)
    assert KineticFlowMatchEulerScheduler.from_pretrained(tmp_path).shaping == KTS
    assert KineticFlowMatchEulerScheduler.from_config(scheduler.config).shaping == KTS
    base = FlowMatchEulerDiscreteScheduler.from_pretrained(tmp_path)  # ignores the extra key
    assert base.config.shift == 2.0
    scheduler.set_shaping(None)
    assert KineticFlowMatchEulerScheduler.from_config(scheduler.config).shaping is None


def test_from_config_given_a_folder_restores_the_gain(tmp_path):
    # diffusers' deprecated from_config(path) loaded the file inside the base class, which dropped the
    # key it does not know: the scheduler came back unshaped, with only a log line
    scheduler = KineticFlowMatchEulerScheduler(shift=2.0)
    scheduler.set_shaping(KTS)
    scheduler.save_pretrained(tmp_path)
    for given in ({"config": str(tmp_path)}, {"config": tmp_path}, {"pretrained_model_name_or_path": str(tmp_path)}):
        with pytest.warns(FutureWarning, match="from_pretrained"):
            loaded = KineticFlowMatchEulerScheduler.from_config(**given)
        assert loaded.shaping == KTS and loaded.config.shift == 2.0, given
    with pytest.warns(FutureWarning, match="from_pretrained"):
        loaded, unused = KineticFlowMatchEulerScheduler.from_config(str(tmp_path), return_unused_kwargs=True)
    assert loaded.shaping == KTS and "kinetic_shaping" not in unused


def test_reloading_a_saved_gain_whose_k_is_unused_does_not_warn_again(tmp_path):
    # KTS(landing="linear", k=5) warns its maker that no form reads k; every from_pretrained or
    # from_config of the saved scheduler (a pipeline's load included) said it again
    import warnings

    with pytest.warns(UserWarning, match="k = 5 is ignored"):
        gain = kfm.KTS(landing="linear", k=5.0)
    scheduler = KineticFlowMatchEulerScheduler(shift=2.0)
    scheduler.set_shaping(gain)
    scheduler.save_pretrained(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = [KineticFlowMatchEulerScheduler.from_pretrained(tmp_path),
                  KineticFlowMatchEulerScheduler.from_config(scheduler.config),
                  KineticFlowMatchEulerScheduler.from_config(scheduler.config, return_unused_kwargs=True)[0],
                  KineticFlowMatchEulerScheduler.from_scheduler(scheduler)]
    assert [str(w.message) for w in caught if "is ignored" in str(w.message)] == []
    assert all(s.shaping == gain and s.shaping.k == 5.0 for s in loaded)
    with pytest.warns(UserWarning, match="k = 5 is ignored"):   # the maker's warning stays
        kfm.KTS(landing="linear", k=5.0)
    with pytest.raises(ValueError, match="beta0"):               # a reload's other checks stay too
        KineticFlowMatchEulerScheduler.from_config({**scheduler.config, "kinetic_shaping": {
            **scheduler.config["kinetic_shaping"], "beta0": -1.0}})


def test_a_gain_that_cannot_be_saved_warns(tmp_path):
    scheduler = KineticFlowMatchEulerScheduler()
    scheduler.set_shaping(lambda t: 1.0 + 0.1 * t)
    with pytest.warns(UserWarning, match="cannot be saved"):
        scheduler.save_pretrained(tmp_path)
    assert KineticFlowMatchEulerScheduler.from_pretrained(tmp_path).shaping is None


# --- Flux ---------------------------------------------------------------------------------------------

def test_the_step_and_grid_methods_keep_the_base_signature():
    """Pipelines ask ``inspect.signature(scheduler.set_timesteps)`` whether ``sigmas=`` is accepted
    (Flux always passes it); a bare ``*args, **kwargs`` override made them refuse the scheduler."""
    base = inspect.signature(FlowMatchEulerDiscreteScheduler().set_timesteps).parameters
    ours = inspect.signature(KineticFlowMatchEulerScheduler().set_timesteps).parameters
    assert list(ours) == list(base)
    assert "sigmas" in ours


def _tiny_flux():
    from diffusers import FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    pipe = FluxPipeline(transformer=transformer, scheduler=scheduler, vae=None, text_encoder=None,
                        tokenizer=None, text_encoder_2=None, tokenizer_2=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run_flux(pipe, steps=5):
    g = torch.Generator().manual_seed(1)
    prompt, pooled = torch.randn(2, 6, 32, generator=g), torch.randn(2, 16, generator=g)
    size = 2 * pipe.vae_scale_factor  # the smallest image: one packed latent token per 2×2 patch
    return pipe(prompt_embeds=prompt, pooled_prompt_embeds=pooled, height=size, width=size,
                num_inference_steps=steps, guidance_scale=3.5, output_type="latent",
                generator=torch.Generator().manual_seed(2)).images


def test_flux_pipeline_samples_as_its_base_scheduler_and_measures_kpe():
    pipe = _tiny_flux()
    base = _run_flux(pipe)
    pipe.scheduler = KineticFlowMatchEulerScheduler.from_scheduler(pipe.scheduler)
    outputs = []
    hook = pipe.transformer.register_forward_hook(lambda m, i, out: outputs.append(out[0].double()))
    latents = _run_flux(pipe)
    hook.remove()
    torch.testing.assert_close(latents, base, rtol=0, atol=0)
    sched = pipe.scheduler
    sigmas = 1.0 - sched.times
    # independent: ½ Σ_i ‖model_output_i‖² (σ_i − σ_{i+1}) from the transformer's own outputs
    expected = sum(0.5 * float(sigmas[i] - sigmas[i + 1]) * out.flatten(1).pow(2).sum(1)
                   for i, out in enumerate(outputs))
    assert len(outputs) == 5 and sched.kpe.shape == (2,)
    torch.testing.assert_close(sched.kpe, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(sched.profile.sum(1), sched.kpe, rtol=1e-12, atol=0)

    pipe.scheduler.set_shaping(KTS)
    shaped = _run_flux(pipe)
    assert not torch.equal(shaped, base)
    assert bool((pipe.scheduler.kpe != pipe.scheduler.kpe_raw).all())


def test_reversed_time_at_scale_1_samples_a_flux_transformer_as_its_pipeline():
    """The documented Flux wrapping: FluxTransformer2DModel takes σ and scales it by 1000 itself
    (FluxPipeline passes timestep / 1000), so ``timestep_scale=1``. The README had 1000 for Flux as
    for SD3: its latents missed the pipeline's by 3.6e-2, without an error."""
    pipe = _tiny_flux()
    calls = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda m, a, kw: calls.append({k: v.clone() if torch.is_tensor(v) else v for k, v in kw.items()}),
        with_kwargs=True)
    latents = _run_flux(pipe, steps=6)
    hook.remove()
    assert float(calls[0]["timestep"][0]) == 1.0                      # σ itself at the first step
    fixed = {k: v for k, v in calls[0].items() if k not in ("hidden_states", "timestep")}

    def net(x, timestep):
        with torch.no_grad():
            return pipe.transformer(hidden_states=x, timestep=timestep, **fixed)[0]

    grid = 1.0 - pipe.scheduler.sigmas.double()
    runs = {scale: kfm.sample(kfm.ReversedTime(kfm.ModelXT(net), timestep_scale=scale), calls[0]["hidden_states"],
                              grid=grid, solver="euler").x for scale in (1.0, 1000.0)}
    torch.testing.assert_close(runs[1.0], latents, rtol=0, atol=1e-5)
    assert float((runs[1000.0] - latents).abs().max()) > 1e-2


def test_from_scheduler_keeps_a_kinetic_schedulers_gain_unless_told():
    shaped = KineticFlowMatchEulerScheduler.from_scheduler(FlowMatchEulerDiscreteScheduler(shift=3.0), shaping=KTS)
    assert KineticFlowMatchEulerScheduler.from_scheduler(shaped).shaping == KTS
    assert KineticFlowMatchEulerScheduler.from_scheduler(shaped, shaping=None).shaping is None
    assert KineticFlowMatchEulerScheduler.from_scheduler(FlowMatchEulerDiscreteScheduler()).shaping is None
    with pytest.raises(ValueError, match="'keep'"):
        KineticFlowMatchEulerScheduler.from_scheduler(shaped, shaping="kts")


@pytest.mark.parametrize("given,shown", [
    (FlowMatchEulerDiscreteScheduler, "the class FlowMatchEulerDiscreteScheduler"),
    (KineticFlowMatchEulerScheduler, "the class KineticFlowMatchEulerScheduler"),
    (3, "int"),
])
def test_from_scheduler_asks_for_an_instance(given, shown):
    # the class went to from_config, which read its config property as a repository name and
    # tried to download it; an int raised AttributeError 'config'
    with pytest.raises(TypeError, match=rf"^scheduler must be a diffusers scheduler instance such as a "
                                        rf"FlowMatchEulerDiscreteScheduler, e.g. pipe.scheduler, got {shown}$"):
        KineticFlowMatchEulerScheduler.from_scheduler(given)


def test_from_scheduler_takes_another_flow_matching_schedulers_instance():
    heun = diffusers.FlowMatchHeunDiscreteScheduler(shift=3.0)
    with pytest.warns(UserWarning, match="FlowMatchHeunDiscreteScheduler takes order-2 steps; the kinetic "
                                         "scheduler takes Euler steps on the same sigma grid"):
        assert KineticFlowMatchEulerScheduler.from_scheduler(heun).config.shift == 3.0


@pytest.mark.parametrize("make, message", [
    (lambda: diffusers.EulerDiscreteScheduler(prediction_type="epsilon"),
     "scheduler EulerDiscreteScheduler predicts 'epsilon'; KineticFlowMatchEulerScheduler takes Euler steps"),
    (lambda: diffusers.IPNDMScheduler(), "scheduler IPNDMScheduler is no flow-matching Euler or Heun scheduler"),
    (lambda: diffusers.DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift=3.0, prediction_type="flow_prediction"),
     r"scheduler DPMSolverMultistepScheduler makes its own flow sigmas \(flow_shift=3.0\)"),
])
def test_from_scheduler_refuses_what_it_cannot_stand_in_for(make, message):
    if "flow_shift" in message and "use_flow_sigmas" not in inspect.signature(
            diffusers.DPMSolverMultistepScheduler.__init__).parameters:
        pytest.skip("this diffusers has no flow sigmas in DPMSolverMultistepScheduler")
    # from_config dropped the keys it did not know: an ε-prediction scheduler stepped its net's
    # output as a velocity, and Sana's flow sigmas (flow_shift 3) became the unshifted grid,
    # both without a word (helper-151)
    with pytest.raises(ValueError, match=message):
        KineticFlowMatchEulerScheduler.from_scheduler(make())


def test_from_scheduler_keeps_a_shift_set_outside_the_config():
    # newer diffusers change the shift with set_shift(), which the config does not record; the
    # kinetic copy must walk the base scheduler's own grid (mutation audit)
    base = FlowMatchEulerDiscreteScheduler(shift=3.0)
    if not hasattr(base, "set_shift"):
        pytest.skip("this diffusers has no set_shift")
    base.set_shift(5.0)
    kinetic = KineticFlowMatchEulerScheduler.from_scheduler(base)
    base.set_timesteps(8)
    kinetic.set_timesteps(8)
    torch.testing.assert_close(kinetic.sigmas, base.sigmas, rtol=0, atol=0)
    unshifted = FlowMatchEulerDiscreteScheduler(shift=3.0)
    unshifted.set_timesteps(8)
    assert not torch.allclose(base.sigmas, unshifted.sigmas)   # the shift moved the grid


@pytest.mark.parametrize("gain", [lambda t: 0.0, lambda t: -1.0, lambda t: float("nan"), lambda t: float("inf")])
def test_a_gain_that_is_not_positive_on_the_grid_is_refused(gain):
    # η ≤ 0 would stall or reverse the Euler step and still report an energy (mutation audit)
    scheduler = KineticFlowMatchEulerScheduler()
    scheduler.set_shaping(gain)
    scheduler.set_timesteps(4)
    with pytest.raises(ValueError, match=r"η\(t\) must be finite and > 0 on the scheduler's grid"):
        scheduler.step(torch.zeros(BATCH, CHANNELS, SIZE, SIZE), scheduler.timesteps[0], _x0())


def _linear_loop(scheduler, steps=6, switch_at=None, shaping=None):
    """A run on the velocity field model_output = 0.5·x − 1 (no net); ``shaping`` set before step ``switch_at``."""
    scheduler.set_timesteps(steps)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    for i, t in enumerate(scheduler.timesteps):
        if i == switch_at:
            scheduler.set_shaping(shaping)
        x = scheduler.step(0.5 * x - 1.0, t, x, return_dict=False)[0]
    return x


def test_a_gain_set_during_a_run_takes_effect_at_the_next_run():
    # set_shaping during a run (a callback_on_step_end, say) dropped the energy of the steps already
    # taken (KPE 24 % low) and shaped the rest of the run, where its docstring says "at the next run"
    plain, shaped = KineticFlowMatchEulerScheduler(shift=3.0), KineticFlowMatchEulerScheduler(shift=3.0)
    shaped.set_shaping(KTS)
    x_plain, x_shaped = _linear_loop(plain), _linear_loop(shaped)
    switched = KineticFlowMatchEulerScheduler(shift=3.0)
    x = _linear_loop(switched, switch_at=3, shaping=KTS)
    assert switched.shaping is KTS
    torch.testing.assert_close(x, x_plain, rtol=0, atol=0)
    torch.testing.assert_close(switched.kpe, plain.kpe, rtol=0, atol=0)
    torch.testing.assert_close(switched.profile, plain.profile, rtol=0, atol=0)
    x = _linear_loop(switched)                                         # the next run is shaped
    torch.testing.assert_close(x, x_shaped, rtol=0, atol=0)
    torch.testing.assert_close(switched.kpe, shaped.kpe, rtol=0, atol=0)
    assert not torch.allclose(shaped.kpe, plain.kpe, rtol=1e-3)


def _recorded_pipeline_run(transformer, scheduler, conditions, dtype, scale, callback=None):
    """Latents of a 6-step SD3 pipeline run and the transformer's outputs, one per network evaluation."""
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=scheduler, **NO_ENCODERS)
    pipe.set_progress_bar_config(disable=True)
    prompt, pooled = (c.to(dtype) for c in conditions)
    outputs = []
    hook = transformer.register_forward_hook(lambda module, args, out: outputs.append(out[0].detach().clone()))
    try:
        latents = pipe(
            prompt_embeds=prompt, pooled_prompt_embeds=pooled, negative_prompt_embeds=torch.zeros_like(prompt),
            negative_pooled_prompt_embeds=torch.zeros_like(pooled), height=SIZE, width=SIZE, num_inference_steps=6,
            guidance_scale=scale, output_type="latent", latents=_x0().to(dtype), callback_on_step_end=callback,
        ).images
    finally:
        hook.remove()
    return latents, outputs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_a_pipeline_run_costs_no_network_evaluation_and_measures_its_guided_outputs(transformer, conditions, dtype,
                                                                                    scale):
    import copy

    net = copy.deepcopy(transformer).to(dtype)
    base, base_outputs = _recorded_pipeline_run(net, FlowMatchEulerDiscreteScheduler(shift=3.0), conditions, dtype,
                                                scale)
    scheduler = KineticFlowMatchEulerScheduler(shift=3.0)
    latents, outputs = _recorded_pipeline_run(net, scheduler, conditions, dtype, scale)
    assert len(outputs) == len(base_outputs) == 6 and latents.dtype == dtype
    torch.testing.assert_close(latents, base, rtol=0, atol=0)
    sigmas = scheduler.sigmas.double()
    expected = torch.zeros(BATCH, dtype=torch.float64)
    for i, out in enumerate(outputs):
        if scale > 1:                                   # the pipeline's own combination, in its dtype
            unconditional, conditional = out.chunk(2)
            out = unconditional + scale * (conditional - unconditional)
        expected += 0.5 * float(sigmas[i] - sigmas[i + 1]) * out.double().flatten(1).pow(2).sum(1)
    assert scheduler.kpe.dtype == torch.float64 and scheduler.kpe.shape == (BATCH,)
    torch.testing.assert_close(scheduler.kpe, expected, rtol=1e-12, atol=0)


def test_an_interrupted_pipeline_holds_the_energy_of_the_steps_it_took(transformer, conditions):
    # pipe.interrupt skips the remaining steps: kpe is the path taken (step_index steps of it), and
    # the next run starts from zero
    def interrupt_after_step_2(pipe, i, t, tensors):
        pipe._interrupt = i == 2
        return {}

    scheduler = KineticFlowMatchEulerScheduler(shift=3.0)
    _, outputs = _recorded_pipeline_run(transformer, scheduler, conditions, torch.float32, 1.0, interrupt_after_step_2)
    sigmas = scheduler.sigmas.double()
    assert len(outputs) == scheduler.step_index == 3
    taken = sum(0.5 * float(sigmas[i] - sigmas[i + 1]) * out.double().flatten(1).pow(2).sum(1)
                for i, out in enumerate(outputs))
    torch.testing.assert_close(scheduler.kpe, taken, rtol=1e-12, atol=0)
    assert scheduler.profile[:, 3:].eq(0).all() and scheduler.profile[:, :3].gt(0).all()
    _recorded_pipeline_run(transformer, scheduler, conditions, torch.float32, 1.0)
    fresh = KineticFlowMatchEulerScheduler(shift=3.0)
    _recorded_pipeline_run(transformer, fresh, conditions, torch.float32, 1.0)
    torch.testing.assert_close(scheduler.kpe, fresh.kpe, rtol=0, atol=0)


def _pipeline_with_images_per_prompt(transformer, scheduler):
    """A tiny SD3 pipeline whose encode_prompt repeats given embeddings num_images_per_prompt times, each
    prompt's rows together, as its text-encoder path does (given embeddings are passed through unrepeated,
    which leaves num_images_per_prompt > 1 without text encoders unusable)."""
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=scheduler, **NO_ENCODERS)
    pipe.set_progress_bar_config(disable=True)
    encode = pipe.encode_prompt

    def repeated(*args, num_images_per_prompt=1, **kwargs):
        out = encode(*args, num_images_per_prompt=num_images_per_prompt, **kwargs)
        return tuple(part.repeat_interleave(num_images_per_prompt, dim=0) for part in out)

    pipe.encode_prompt = repeated
    return pipe


def test_num_images_per_prompt_gives_one_energy_per_image_in_the_pipelines_order(transformer, conditions):
    """num_images_per_prompt = 2 under guidance: kpe has one row per image (prompt p's images at rows 2p, 2p + 1),
    each equal to ½Σ η²‖guided output‖²Δσ of the transformer's own outputs, and to the energy of that image's
    latents and prompt run alone."""
    images, scale, steps = 2, 4.0, 5
    prompt, pooled = conditions
    x0 = kfm.noise(list(range(BATCH * images)), (CHANNELS, SIZE, SIZE))
    call = dict(height=SIZE * 8, width=SIZE * 8, num_inference_steps=steps, guidance_scale=scale,
                output_type="latent")

    def run(rows, count, latents):
        scheduler = KineticFlowMatchEulerScheduler(shift=3.0)
        scheduler.set_shaping(KTS)
        pipe = _pipeline_with_images_per_prompt(transformer, scheduler)
        outputs = []
        hook = transformer.register_forward_hook(lambda module, args, out: outputs.append(out[0].double()))
        try:
            latents = pipe(prompt_embeds=prompt[rows], pooled_prompt_embeds=pooled[rows],
                           negative_prompt_embeds=torch.zeros_like(prompt[rows]),
                           negative_pooled_prompt_embeds=torch.zeros_like(pooled[rows]),
                           num_images_per_prompt=count, latents=latents, **call).images
        finally:
            hook.remove()
        return latents, scheduler, outputs

    latents, scheduler, outputs = run(slice(0, BATCH), images, x0)
    assert latents.shape == (BATCH * images, CHANNELS, SIZE, SIZE) and scheduler.kpe.shape == (BATCH * images,)
    sigmas = scheduler.sigmas.double()
    expected = torch.zeros(BATCH * images, dtype=torch.float64)
    for i, out in enumerate(outputs):
        unconditional, conditional = out.chunk(2)
        guided = unconditional + scale * (conditional - unconditional)
        eta = KTS(1.0 - float(sigmas[i]))
        expected += 0.5 * eta**2 * float(sigmas[i] - sigmas[i + 1]) * guided.flatten(1).pow(2).sum(1)
    torch.testing.assert_close(scheduler.kpe, expected, rtol=1e-6, atol=0)
    for p in range(BATCH):                       # prompt p's first image, run alone
        _, alone, _ = run(slice(p, p + 1), 1, x0[p * images:p * images + 1])
        torch.testing.assert_close(alone.kpe[0], scheduler.kpe[p * images], rtol=1e-5, atol=0)


STOCHASTIC = ("stochastic_sampling=True has no ODE path whose kinetic energy could be measured: "
              "KineticFlowMatchEulerScheduler takes the deterministic Euler steps (stochastic_sampling=False)")


def test_stochastic_sampling_is_refused_when_the_scheduler_is_built_not_at_its_first_step():
    # it was accepted, and refused at the first step(), after the pipeline's first network call
    if "stochastic_sampling" not in inspect.signature(FlowMatchEulerDiscreteScheduler.__init__).parameters:
        pytest.skip("stochastic_sampling is newer than this diffusers")
    exact = "^" + re.escape(STOCHASTIC) + "$"
    with pytest.raises(ValueError, match=exact):
        KineticFlowMatchEulerScheduler(stochastic_sampling=True)
    with pytest.raises(ValueError, match=exact):
        KineticFlowMatchEulerScheduler.from_scheduler(FlowMatchEulerDiscreteScheduler(stochastic_sampling=True))
    with pytest.raises(ValueError, match=exact):
        KineticFlowMatchEulerScheduler.from_config({"stochastic_sampling": True})
    # the config's keys are still the base class's: from_config of a deterministic one builds it
    built = KineticFlowMatchEulerScheduler.from_config(FlowMatchEulerDiscreteScheduler(shift=3.0).config)
    assert built.config.shift == 3.0 and built.config.stochastic_sampling is False


def test_the_constructor_keeps_the_base_signature_and_its_own_docstring():
    # reviewer-328: functools.wraps gave __init__ the base class's docstring and module, hiding ours (which says
    # stochastic_sampling is refused); diffusers reads only the signature, for the config's keys
    base, ours = FlowMatchEulerDiscreteScheduler, KineticFlowMatchEulerScheduler
    def read(method):   # what diffusers reads of it (older diffusers leave a parameter unannotated: Any in ours)
        return [(p.name, p.kind, p.default) for p in inspect.signature(method).parameters.values()]

    assert read(ours.__init__) == read(base.__init__)
    assert ours._get_init_keys(ours) == base._get_init_keys(base)
    assert ours.extract_init_dict(dict(base().config))[0] == base.extract_init_dict(dict(base().config))[0]
    assert "stochastic sampling" in ours.__init__.__doc__ and ours.__init__.__module__ == ours.__module__
    settings = [{k: v for k, v in made(shift=3.0).config.items() if k != "_class_name"} for made in (ours, base)]
    assert settings[0] == settings[1]
