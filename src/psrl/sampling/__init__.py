"""Pure sampling math for flow-matching models: ODE/SDE/CPS steps, Gaussian log-probs, sigma schedules, and the
:class:`SamplingConfig` they are driven by."""
from psrl.sampling.config import SamplingConfig
from psrl.sampling.schedules import StepPlan, flux_sigmas, plan_steps, resolution_shift_mu, shift_sigmas
from psrl.sampling.sde import gaussian_log_prob, kl_to_reference, reduce_log_density, sde_step_with_logprob

__all__ = ["SamplingConfig", "StepPlan", "flux_sigmas", "gaussian_log_prob", "kl_to_reference", "plan_steps",
           "reduce_log_density", "resolution_shift_mu", "sde_step_with_logprob", "shift_sigmas"]
