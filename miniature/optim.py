"""The optimiser and the weight average that every frozen part of the world trains with.

The frozen parts are small models of many tensors (a video UNet3D has 622), so the per-tensor Python
loops of the default AdamW and of a plain EMA were a tenth of a training step on one CPU thread: the
fused AdamW and one foreach lerp do the same updates as single kernels (``bench/video_decoder_step.py``:
0.232 -> 0.216 s a video UNet3D step, 1.07x)."""
from __future__ import annotations

import copy

import torch


def adamw(params, **kwargs) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` with its fused kernel (CPU and CUDA)."""
    return torch.optim.AdamW(params, fused=True, **kwargs)


def adam(params, **kwargs) -> torch.optim.Adam:
    return torch.optim.Adam(params, fused=True, **kwargs)


@torch.no_grad()
def ema_update(averages: list[torch.Tensor], params, decay: float) -> None:
    """``average <- decay * average + (1 - decay) * param`` for every pair, in one kernel."""
    torch._foreach_lerp_(averages, [p.detach() for p in params], 1 - decay)


class EMA:
    """An exponential moving average of ``model``'s weights, kept as a copy of the model (``shadow``)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = copy.deepcopy(model).requires_grad_(False).eval()
        self._averages = list(self.shadow.parameters())

    def update(self, model: torch.nn.Module, step: int) -> None:
        # the warm-up of the decay lets the average follow the fast early steps
        ema_update(self._averages, model.parameters(), min(self.decay, (1 + step) / (10 + step)))
