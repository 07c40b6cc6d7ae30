"""Optimizers and learning-rate schedules from `config.optimizer`."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict


def learning_rate_schedule(cfg: ConfigDict, num_steps: int) -> optax.Schedule:
  """Linear warm-up from 0, then constant or cosine decay to the end of training."""
  peak = cfg.learning_rate
  if cfg.schedule == "cosine":
    decay_steps = max(num_steps - cfg.warmup_steps, 1)
    main = optax.cosine_decay_schedule(peak, decay_steps, alpha=cfg.final_lr_fraction)
  else:
    main = optax.constant_schedule(peak)
  if cfg.warmup_steps == 0:
    return main
  warmup = optax.linear_schedule(0.0, peak, cfg.warmup_steps)
  return optax.join_schedules([warmup, main], [cfg.warmup_steps])


def ema_update(ema_params: Any, params: Any, decay: jax.Array | float) -> Any:
  """decay * ema + (1 - decay) * params, leaf by leaf: one step of an
  exponential moving average of the weights."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)


def warmed_up_ema_decay(decay: float, step: jax.Array) -> jax.Array:
  """min(decay, (1 + step) / (10 + step)): early on the average follows the
  weights closely, so it never holds much of the random initialisation."""
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def make_optimizer(cfg: ConfigDict, num_steps: int) -> optax.GradientTransformation:
  schedule = learning_rate_schedule(cfg, num_steps)
  parts = []
  if cfg.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  if cfg.name == "sgd":  # b1 is the momentum (0 for plain SGD)
    parts.append(optax.sgd(schedule, momentum=cfg.b1 or None))
  elif cfg.name == "adamw":
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay))
  else:
    parts.append(optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))
  return optax.chain(*parts)


def gradient_step(state: Any, optimizer: optax.GradientTransformation,
                  loss_fn: Callable[[Any], tuple[jax.Array, dict[str, jax.Array]]]
                  ) -> tuple[Any, dict[str, jax.Array]]:
  """One update of `state.params` (a state with step, params, opt_state) on
  loss_fn(params) -> (loss, metrics); returns the state one step on and
  {"loss", **metrics, "grad_norm"}."""
  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, **metrics, "grad_norm": optax.global_norm(grads)}
  return state.replace(step=state.step + 1, params=params,
                       opt_state=opt_state), metrics
