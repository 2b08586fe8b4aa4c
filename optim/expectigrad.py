"""Expectigrad (Daley & Amato 2020): an arithmetic mean of squared gradients with outer momentum."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from optim._checks import (
    Check,
    Checked,
    check_bool,
    check_nonnegative,
    check_optional_bool,
    check_positive,
    check_unit_interval,
    evaluate,
)
from optim._compiled import Rule, at, lerp, low_weight, split
from optim._foreach import Workspace, buckets, fusable, fused_adagrad, pick, workspace, written

__all__ = ["Expectigrad", "expectigrad", "expectigrad_compiled", "expectigrad_foreach"]


def expectigrad(
    params: list[Tensor],
    grads: list[Tensor],
    sum_sqs: list[Tensor],
    counters: list[Tensor | None],
    exp_avgs: list[Tensor | None],
    steps: list[int],
    *,
    lr: float,
    beta: float,
    eps: float,
    work: Workspace | None = None,
) -> None:
    """Apply one Expectigrad update in place (``steps`` incremented; a ``None`` counter means n = t).

    ``work`` keeps one buffer per tensor between steps (it holds 1[g ≠ 0], s / n, √(s/n) + ε and u in turn).
    """
    work = work or Workspace()
    for param, grad, sum_sq, counter, exp_avg, step in zip(
        params, grads, sum_sqs, counters, exp_avgs, steps, strict=True
    ):
        sum_sq.addcmul_(grad, grad)
        dtype = _working_dtype(sum_sq, counter)
        buffers = work.like([param], dtype=dtype)
        buffer = torch.empty_like(sum_sq, dtype=dtype) if buffers is None else buffers[0]
        if counter is None:
            mean_sq = torch.div(sum_sq, step, out=buffer)
        else:
            # a NaN gradient counts (NaN != 0), so it propagates instead of vanishing. The comparison is
            # written into a float buffer: adding a bool tensor to a float one is several times slower.
            counter.add_(torch.ne(grad, 0, out=buffer))
            # The counter starts at the smallest normal float instead of 0: where n = 0, s = 0 and s / tiny = 0
            # is the 0/0 := 0 rule; where n ≥ 1, n + tiny rounds to n exactly. No clamp pass is needed.
            mean_sq = torch.div(sum_sq, counter, out=buffer)
        update = torch.div(grad, mean_sq.sqrt_().add_(eps), out=mean_sq)
        if update.dtype != param.dtype:  # low-precision parameters keep a float32 counter
            update = update.to(param.dtype)
        if exp_avg is None:
            param.add_(update, alpha=-lr)
        else:
            exp_avg.lerp_(update, 1 - beta)
            param.add_(exp_avg, alpha=-lr / (1 - beta**step))


def expectigrad_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    sum_sqs: list[Tensor],
    counters: list[Tensor | None],
    exp_avgs: list[Tensor | None],
    steps: list[int],
    *,
    lr: float,
    beta: float,
    eps: float,
    work: Workspace | None = None,
) -> None:
    r""":func:`expectigrad` on lists of tensors: one bucket per device, dtype, step count, kind of state and count.

    Where :math:`n_{t-1} = t-1` in every coordinate of a tensor (dense counting, or a sparse counter that has
    counted every step so far; tested per tensor and read back in one transfer), the step is
    :math:`u_t = g_t/(\sqrt{s_t/t} + ε) = \sqrt t\,g_t/(\sqrt{s_t} + ε\sqrt t)` (where :math:`g_t = 0`, u = 0
    whatever n is, and n keeps its exact count): torch's fused Adagrad kernel
    (:func:`optim._foreach.fused_adagrad`) with η = γ√t on θ (β = 0), or with η = −(1−β)√t on m after
    :math:`m ← βm`, then :math:`θ ← θ - γ/(1-β^t)\,m`. That is 5 or 10 passes over memory instead of 16 or 24, equal
    to rounding (plus the counter's 5 passes). ``work`` keeps one buffer per tensor between steps, as in
    :func:`expectigrad`.
    """
    work = work or Workspace()
    counted = _counted_every_step(grads, counters, steps)
    keys = [
        (step, c is None, m is None, every)
        for step, c, m, every in zip(steps, counters, exp_avgs, counted, strict=True)
    ]
    columns = [params, grads, sum_sqs, counters, exp_avgs]
    for (step, dense, plain, every), (params_, grads_, sum_sqs_, counters_, exp_avgs_) in buckets(columns, keys):
        # dense counting on the fused kernel needs no work buffer
        buffers = None if dense and every else work.like(params_, dtype=_working_dtype(sum_sqs_[0], counters_[0]))
        if not dense:
            # torch has no multi-tensor comparison, so 1[g ≠ 0] is taken per tensor (as in expectigrad())
            flags = buffers or [torch.empty_like(c) for c in counters_]
            torch._foreach_add_(counters_, [torch.ne(g, 0, out=f) for g, f in zip(grads_, flags, strict=True)])
        if every and _adagrad_step(params_, grads_, sum_sqs_, exp_avgs_, step, lr=lr, beta=beta, eps=eps):
            continue
        torch._foreach_addcmul_(sum_sqs_, grads_, grads_)
        if dense:
            updates = written(buffers, torch._foreach_div, torch.div, sum_sqs_, step)
        else:
            updates = written(buffers, torch._foreach_div, torch.div, sum_sqs_, counters_)
        torch._foreach_sqrt_(updates)
        torch._foreach_add_(updates, eps)
        updates = written(buffers, torch._foreach_div, torch.div, grads_, updates)
        if updates[0].dtype != params_[0].dtype:  # low-precision parameters keep a float32 counter
            updates = [update.to(params_[0].dtype) for update in updates]
        if plain:
            torch._foreach_add_(params_, updates, alpha=-lr)
        else:
            torch._foreach_lerp_(exp_avgs_, updates, 1 - beta)
            torch._foreach_add_(params_, exp_avgs_, alpha=-lr / (1 - beta**step))


def _working_dtype(sum_sq: Tensor, counter: Tensor | None) -> torch.dtype:
    """The dtype s/n, √(s/n) + ε and u are made in.

    The counter's (float32 for low-precision parameters), and float32 at least without one, where ε would underflow
    a half-precision sum (1e-8 is 0 in float16: an always-zero coordinate got 0/0 = NaN, not its zero update).
    """
    return counter.dtype if counter is not None else torch.promote_types(sum_sq.dtype, torch.float32)


def _counted_every_step(grads: list[Tensor], counters: list[Tensor | None], steps: list[int]) -> list[bool]:
    """Whether :math:`n_{t-1} = t-1` everywhere before this step, for each tensor the fused kernel could take.

    Asked only where that kernel runs (float32/float64 on CPU); dense counting always has n = t, a sparse counter
    is tested, and the tests of all tensors are read back in one transfer. The counter holds n plus a tiny offset
    (n exactly for n ≥ 1), so :math:`n_{t-1} = t-1` is ``min n ≥ t - 1``, an integer comparison that stays exact as
    long as the counter does (t ≤ 2²⁴ in float32).
    """
    found = [False] * len(grads)
    tests: dict[int, Tensor] = {}
    for index, (grad, counter) in enumerate(zip(grads, counters, strict=True)):
        if grad.device.type != "cpu" or not fusable([grad]):
            continue
        if counter is None:
            found[index] = True
        elif counter.numel() and counter.dtype == grad.dtype:
            tests[index] = counter.amin() >= steps[index] - 1
    if tests:
        for index, every in zip(tests, torch.stack(list(tests.values())).tolist(), strict=True):
            found[index] = every
    return found


def _adagrad_step(
    params: list[Tensor],
    grads: list[Tensor],
    sum_sqs: list[Tensor],
    exp_avgs: list[Tensor | None],
    step: int,
    *,
    lr: float,
    beta: float,
    eps: float,
) -> bool:
    """Expectigrad's step with :math:`n_t = t` as torch's fused Adagrad kernel; ``False`` where it cannot run."""
    root = math.sqrt(step)
    if exp_avgs[0] is None:
        return fused_adagrad(params, grads, sum_sqs, lr=lr * root, eps=eps * root)
    if not (params[0].device.type == "cpu" and fusable(params, grads, sum_sqs, exp_avgs)):
        return False
    torch._foreach_mul_(exp_avgs, beta)
    fused_adagrad(exp_avgs, grads, sum_sqs, lr=-(1 - beta) * root, eps=eps * root)
    torch._foreach_add_(params, exp_avgs, alpha=-lr / (1 - beta**step))
    return True


def _update(
    param: Tensor,
    grad: Tensor,
    sum_sq: Tensor,
    counter: Tensor | None,
    exp_avg: Tensor | None,
    *,
    lr: float,
    beta: float,
    eps: float,
    step: float,
    step_size: float,
    low: bool,
) -> None:
    r"""One tensor's step of :func:`expectigrad` for the compiled path (:func:`expectigrad_compiled`).

    With η = ``step_size`` (γ/(1−βᵗ)): :math:`s ← s + g^2`, :math:`n ← n + 1[g ≠ 0]` (n = t without a counter),
    :math:`u = g/(\sqrt{s/n} + ε)`, then :math:`θ ← θ - γu`, or :math:`m ← βm + (1-β)u,\ θ ← θ - ηm`.
    """
    sum_sq.copy_(sum_sq + grad * grad)
    if counter is None:
        mean_sq = sum_sq / step
    else:
        counter.copy_(counter + (grad != 0).to(counter.dtype))
        mean_sq = sum_sq / counter
    update = grad / (mean_sq.sqrt() + eps)
    if exp_avg is None:
        param.sub_(lr * update)
    else:
        exp_avg.copy_(lerp(exp_avg, update, 1 - beta, low=low))
        param.sub_(step_size * exp_avg)


_RULE = Rule(_update, writes=(0, 2, 3, 4))


def expectigrad_compiled(
    params: list[Tensor],
    grads: list[Tensor],
    sum_sqs: list[Tensor],
    counters: list[Tensor | None],
    exp_avgs: list[Tensor | None],
    steps: list[int],
    *,
    lr: float,
    beta: float,
    eps: float,
    work: Workspace | None = None,
) -> None:
    """:func:`expectigrad` with its float32/float64 tensors' steps as compiled kernels (:mod:`optim._compiled`).

    Other tensors (bfloat16, float16, large ones that are not contiguous) take :func:`expectigrad_foreach`.
    """
    columns = [params, grads, sum_sqs, counters, exp_avgs, steps]
    chosen, others = split(columns)
    shared: dict[int, dict[str, float]] = {}
    for step in {steps[index] for index in chosen}:
        step_size = lr / (1 - beta**step)
        shared[step] = dict(lr=lr, beta=beta, eps=eps, step=float(step), step_size=step_size, low=low_weight(1 - beta))
    # first: if it cannot compile, nothing has changed
    _RULE.run("Expectigrad", at(columns[:5], chosen), [shared[steps[index]] for index in chosen])
    if others:
        expectigrad_foreach(*at(columns, others), lr=lr, beta=beta, eps=eps, work=work)


def _exact_counts(dtype: torch.dtype) -> int:
    """The largest count a float counter of ``dtype`` reaches by adding 1s: 2/eps (2^24 in float32)."""
    return round(2 / torch.finfo(dtype).eps)


class Expectigrad(Checked):
    r"""Expectigrad: the denominator is the mean of all squared gradients seen where the coordinate was active.

    γ, β, ε are ``lr``, ``beta``, ``eps``; t counts steps from 1.

    .. math::
        s_t = s_{t-1} + g_t^2,\quad n_t = n_{t-1} + 1[g_t \ne 0]\ (\text{dense: } n_t = t),\quad
        a_t = s_t / n_t\ (0/0 := 0),\\
        u_t = \frac{g_t}{\sqrt{a_t} + ε},\quad m_t = β m_{t-1} + (1-β) u_t,\quad
        θ_t = θ_{t-1} - \frac{γ}{1-β^t} m_t\quad (β = 0:\ θ_t = θ_{t-1} - γ u_t).

    Momentum is applied outside the adaptive scaling ("outer momentum"), as in the authors' code. A coordinate
    whose gradient was always zero gets a zero update. The counter n is kept in at least float32, so it counts
    exactly up to 2²⁴ ≈ 1.7e7 steps (float16 would stop at 2048), and NaN gradients propagate to θ instead of being
    masked.

    Args:
        params: Iterable of parameters or param groups.
        lr: γ. Default 1e-3 (Daley & Amato 2020).
        beta: β in [0, 1). Default 0.9.
        eps: ε. Default 1e-8.
        sparse_counter: count only nonzero gradients (``True``, authors' default) or every step.
        foreach: the multi-tensor path (:func:`expectigrad_foreach`); ``None`` (default) takes it when every
            parameter is on a device with multi-tensor kernels (CUDA), as torch does.
        compiled: each step as ``torch.compile``'d kernels (:func:`expectigrad_compiled`; the first step
            compiles, see :mod:`optim._compiled`); it takes precedence over ``foreach``. Default False.

    State per parameter: ``step``, ``sum_sq`` s, ``counter`` n (sparse only; stored as n + the smallest normal
    float, which equals n exactly for n ≥ 1), ``exp_avg`` m (β > 0 only). A step without n or m drops it, and
    switching it on again later is refused (a ``ValueError``): it was not kept on every step.

    Example:
        >>> p = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
        >>> opt = Expectigrad([p], lr=0.1, beta=0.0)
        >>> (p[0] * 2.0).backward(); opt.step(); p.tolist()
        [0.8999999761581421, 1.0]

    Reference: Daley & Amato, "Expectigrad: Fast Stochastic Optimization with Robust Convergence Properties",
    arXiv:2010.01356, Algorithm 1.
    """

    HYPERPARAMETERS: ClassVar[Mapping[str, Check]] = {
        "lr": check_nonnegative,
        "beta": check_unit_interval,
        "eps": check_positive,
        "sparse_counter": check_bool,
        "foreach": check_optional_bool,
        "compiled": check_bool,
    }

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        beta: float = 0.9,
        eps: float = 1e-8,
        sparse_counter: bool = True,
        foreach: bool | None = None,
        compiled: bool = False,
    ) -> None:
        defaults = dict(lr=lr, beta=beta, eps=eps, sparse_counter=sparse_counter, foreach=foreach, compiled=compiled)
        super().__init__(params, defaults)

    def keeps(self, name: str, value: Any) -> bool:
        """The saved counters pass through ``load_state_dict`` too: torch would cast them to each parameter's dtype."""
        if name != "counter":
            return super().keeps(name, value)
        if not (isinstance(value, Tensor) and value.is_floating_point()):
            raise ValueError(f"Expectigrad state_dict: a counter must be a floating-point tensor, got {value!r:.60}")
        return True

    def restored(self, param: Any, name: str, value: Any) -> Any:
        """A counter on its parameter's device in at least float32 (a bfloat16 counter stops at 256)."""
        if name != "counter" or not isinstance(param, Tensor):
            return super().restored(param, name, value)
        return value.to(param.device, torch.promote_types(param.dtype, torch.float32), copy=True)

    def _check_switches(self) -> None:
        """Refuse a ``beta`` raised above 0 or a ``sparse_counter`` switched on after a parameter's step without it.

        Its momentum m, or its count n of nonzero gradients, was not kept on every step until then (a step without
        it drops it from the state, also when it is switched off only for a while), and neither can be recovered
        from the state: starting them at 0 would be a different algorithm. Checked before any state changes.
        """
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if not state or p.grad is None:
                    continue
                for key, needed, switch, kept in (
                    ("exp_avg", group["beta"] > 0, "beta > 0", "momentum m"),
                    ("counter", group["sparse_counter"], "sparse_counter=True", "count n of nonzero gradients"),
                ):
                    if needed and key not in state:
                        raise ValueError(
                            f"Expectigrad: {switch} set after step {state['step']} of a parameter that did not keep "
                            f"its {kept} on every step until then; set it from the first step, or start a new optimizer"
                        )

    def _init_group(self, group: dict[str, Any]) -> tuple[list[Any], ...]:
        params, grads, sum_sqs, counters, exp_avgs, states = [], [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("Expectigrad does not support sparse gradients")
            state = self.state[p]
            if not state:
                state["step"] = 0  # steps taken
                state["sum_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)  # s = Σ g²
                if group["sparse_counter"]:
                    counter_dtype = torch.promote_types(p.dtype, torch.float32)
                    # n = Σ 1[g ≠ 0], offset by the smallest normal float (exact for n ≥ 1, see expectigrad())
                    state["counter"] = torch.full_like(p, torch.finfo(counter_dtype).tiny, dtype=counter_dtype)
                if group["beta"] > 0:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)  # m
            state["step"] += 1
            # a step without the counter or m leaves it stale: dropped, so switching it on again is refused
            if not group["sparse_counter"]:
                state.pop("counter", None)
            if group["beta"] == 0:
                state.pop("exp_avg", None)
            counter = state.get("counter")
            if (
                counter is not None
                and state["step"] > _exact_counts(counter.dtype)
                and not getattr(self, "_warned_counting", False)
            ):
                self._warned_counting = True
                warnings.warn(
                    f"Expectigrad: step {state['step']} is beyond what its {counter.dtype} counter n counts exactly "
                    "(2^24 steps in float32): n stops growing and the step size drifts from the algorithm's",
                    RuntimeWarning,
                    stacklevel=3,
                )
            params.append(p)
            grads.append(p.grad)
            sum_sqs.append(state["sum_sq"])
            counters.append(state["counter"] if group["sparse_counter"] else None)
            exp_avgs.append(state["exp_avg"] if group["beta"] > 0 else None)
            states.append(state)
        return params, grads, sum_sqs, counters, exp_avgs, states

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one step; ``closure`` (optional) re-evaluates the model and returns the loss."""
        loss = evaluate(closure)
        self._check_switches()
        for group in self.param_groups:
            params, grads, sum_sqs, counters, exp_avgs, states = self._init_group(group)
            kernel = pick(expectigrad, expectigrad_foreach, group, params, expectigrad_compiled)
            kernel(
                params,
                grads,
                sum_sqs,
                counters,
                exp_avgs,
                [state["step"] for state in states],
                lr=group["lr"],
                beta=group["beta"],
                eps=group["eps"],
                work=workspace(self),
            )
        return loss
