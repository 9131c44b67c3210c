"""A training run's numerical regime: ``fp32``, ``bf16`` (mixed) or ``bf16_pure``.

- ``fp32``: weights, gradients, optimizer states and arithmetic in fp32.
- ``bf16``: autocast to bf16 over fp32 master weights and optimizer states (TRL's ``--bf16 true``).
- ``bf16_pure``: weights, gradients and AdamW's states *stored* in bf16, no fp32 master copy (what the paper's
  fine-tuning code does: the model loaded in bf16, AdamW run on it). An update smaller than half a bf16 step of
  its weight rounds away: at lr 1e-4 most of SmolLM2's weights do not move, which is the point of the regime.

Where the device computes bf16 natively (CUDA with bf16, a CPU with AVX-512 BF16 or AMX), ``bf16_pure`` is the
real thing: the model is cast to bf16 and trained as it is. Elsewhere torch emulates bf16 arithmetic ~50× slower
than fp32, so ``bf16_pure`` is emulated exactly where it matters, in what is stored: the arithmetic stays fp32,
and every stored value is rounded to bf16 (round to nearest even, as a cast does): the weights when training
starts and after every optimizer step, the gradients before the step, the optimizer's states after it
(``Bf16Storage``). ``bf16`` mixed on such a CPU trains in fp32 instead (``bf16_on_this_device``). The regime a run
got, and how, is recorded in its ``run.json`` and summary.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from trainers.options import bf16_on_this_device, cpu_has_native_bf16

Precision = Literal["fp32", "bf16", "bf16_pure"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "bf16_pure")


@dataclass(frozen=True)
class Regime:
    """The regime asked for and the one the device runs (``how``: native, emulated, or why it fell back)."""

    asked: str
    name: str
    how: str

    @property
    def emulated(self) -> bool:
        return self.how == "emulated"

    def describe(self) -> str:
        return self.name if self.how == "native" else f"{self.name} ({self.how})"


def native_bf16(on_cpu: bool) -> bool:
    import torch

    if not on_cpu:
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16()


def choose(asked: str | None, training: Any) -> Regime:
    """The regime of a run from its ``precision`` option (None: from TRL's ``bf16`` flag), setting ``training``'s
    mixed-precision flags to match.
    """
    asked = asked or ("bf16" if training.bf16 else "fp32")
    if asked not in PRECISIONS:
        raise ValueError(f"precision {asked!r} is not one of {', '.join(PRECISIONS)}")
    training.bf16 = asked == "bf16" and bf16_on_this_device(True, training.use_cpu)
    # derived from bf16 when the config was built, and what the accelerator reads (fp16, not a regime here, is left)
    if training.bf16 or getattr(training, "mixed_precision", None) == "bf16":
        training.mixed_precision = "bf16" if training.bf16 else "no"
    if asked == "bf16":
        return Regime(asked, "bf16", "native") if training.bf16 else Regime(asked, "fp32", "no native bf16")
    if asked == "bf16_pure":
        return Regime(asked, asked, "native" if native_bf16(training.use_cpu) else "emulated")
    return Regime(asked, "fp32", "native")


def prepare_model(model: Any, regime: Regime) -> Any:
    """The model as the regime stores it: cast to bf16 (native ``bf16_pure``), its weights rounded to bf16
    (emulated), or as loaded.
    """
    import torch

    if regime.name != "bf16_pure":
        return model
    if not regime.emulated:
        return model.to(torch.bfloat16)
    round_to_bf16_(p.data for p in model.parameters())
    return model


def round_to_bf16_(tensors: Any) -> None:
    """Round each floating tensor in place to its nearest bf16 value (its dtype unchanged)."""
    import torch

    with torch.no_grad():
        for tensor in tensors:
            if tensor.is_floating_point() and tensor.dtype != torch.bfloat16:
                tensor.copy_(tensor.to(torch.bfloat16))


def optimizer_states(optimizer: Any) -> list[Any]:
    """Every floating state tensor of ``optimizer`` but its step counters (AdamW: exp_avg, exp_avg_sq)."""
    import torch

    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
    return [
        value
        for state in inner.state.values()
        for key, value in state.items()
        if key != "step" and isinstance(value, torch.Tensor) and value.is_floating_point()
    ]


def callbacks(regime: Regime) -> list[Any]:
    """The trainer callbacks the regime needs (emulated ``bf16_pure``: ``Bf16Storage``)."""
    return [bf16_storage()()] if regime.name == "bf16_pure" and regime.emulated else []


@cache
def bf16_storage() -> type:
    """The ``Bf16Storage`` callback class (made on first use: transformers is imported only then)."""
    from transformers import TrainerCallback

    class Bf16Storage(TrainerCallback):
        """bf16 storage over fp32 arithmetic: weights, gradients and optimizer states rounded to bf16 where a bf16
        run stores them (see the module docstring).
        """

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            round_to_bf16_(p.data for p in model.parameters())

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            round_to_bf16_(p.grad for p in model.parameters() if p.grad is not None)

        def on_optimizer_step(
            self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None, **kwargs: Any
        ) -> None:
            round_to_bf16_(p.data for p in model.parameters())
            if optimizer is not None:
                round_to_bf16_(optimizer_states(optimizer))

    return Bf16Storage
