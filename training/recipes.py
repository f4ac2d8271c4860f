"""Stage recipes: what each NExT-GPT stage trains, on which data, with which hyper-parameters.

Real-preset defaults follow the NExT-GPT paper/repo: Adam (0.9, 0.95), weight decay 0.001,
peak lr 5e-4, warmup max(10, 10 % of steps), gradient clip 1.0, one epoch, max length 512,
seed 13 (ZeRO-2 in the reference; here any accelerate config). Tiny defaults make a CPU run
take seconds.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from anyany.model import STAGE_TRAINABLE


@dataclass
class TrainConfig:
    stage: str
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.001
    warmup_ratio: float = 0.1
    min_warmup_steps: int = 10
    grad_clip: float = 1.0
    epochs: int = 1
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 4
    grad_accum: int = 1
    mixed_precision: str = "auto"  # "auto": bf16 on GPUs that support it, else no
    scheduler: str = "cosine"
    seed: int = 13
    save_every: int = 500
    keep_last: int = 2
    eval_every: int = 500
    log_every: int = 10
    num_workers: int = 0
    # batches of rows of about one length (``data.LengthGroupedSampler``): less padding where lengths vary
    group_by_length: bool = False

    @property
    def trainable(self) -> tuple[str, ...]:
        return STAGE_TRAINABLE[self.stage]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class StageRecipe:
    stage: str
    data: str  # what the stage reads
    description: str
    real: TrainConfig
    tiny: TrainConfig

    @property
    def trainable(self) -> tuple[str, ...]:
        return STAGE_TRAINABLE[self.stage]

    def defaults(self, preset: str) -> TrainConfig:
        return replace(self.tiny if preset.startswith("tiny") else self.real)


def _tiny(stage: str, **kw) -> TrainConfig:
    base = dict(lr=1e-2, weight_decay=0.0, min_warmup_steps=2, max_steps=40, batch_size=4, seed=13,
                save_every=10, eval_every=20, log_every=5, mixed_precision="no")
    base.update(kw)
    return TrainConfig(stage=stage, **base)


RECIPES: dict[str, StageRecipe] = {
    "stage1": StageRecipe(
        "stage1", "caption pairs (CC3M / WebVid / AudioCaps JSON)",
        "encoder-side alignment: LM loss on the caption given the projected ImageBind embedding",
        real=TrainConfig("stage1", batch_size=32, save_every=1000, eval_every=1000),
        tiny=_tiny("stage1"),
    ),
    "stage2": StageRecipe(
        "stage2", "text captions per target modality (same JSON files, no media)",
        "decoder-side alignment: LM loss on signal tokens + distance of projected signal states to decoder text embeddings",
        real=TrainConfig("stage2", batch_size=32, save_every=1000, eval_every=1000),
        tiny=_tiny("stage2"),
    ),
    "stage3": StageRecipe(
        "stage3", "instruction conversations (MosIT / LLaVA / Alpaca / T->T+X JSON)",
        "instruction tuning: LM loss over assistant turns + generation distance (video x2); LoRA on",
        # conversations of one to several turns: length-grouped batches carry far less padding
        real=TrainConfig("stage3", batch_size=4, grad_accum=4, save_every=500, eval_every=500, group_by_length=True),
        tiny=_tiny("stage3", lr=5e-3, group_by_length=True),
    ),
}
