"""Model architectures as data: the spec and ResNet forms and the named presets.

Kept free of TensorFlow (the params schema validates against these); kdflow.models builds them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StrictSection(BaseModel):
    """A params section: strict types (no silent "0.5" -> 0.5 or true -> 1), unknown keys are
    errors (a misspelt key is never ignored), immutable once validated."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class ArchSpec(StrictSection):
    """A plain CNN/MLP: conv blocks (conv -> [batch-norm] -> relu -> max-pool), flatten,
    dense layers with relu and dropout, then a Dense(num_classes) logits layer."""

    conv_filters: list[int] = Field(default_factory=list)
    kernel_size: int = Field(3, ge=1)
    pool_size: int = Field(2, ge=1)
    batch_norm: bool = False
    dense_units: list[int] = Field(default_factory=list)
    dropout: float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _positive_widths(self) -> "ArchSpec":
        for key in ("conv_filters", "dense_units"):
            bad = [w for w in getattr(self, key) if w < 1]
            if bad:
                raise ValueError(f"{key} must be positive integers, got {bad}")
        return self


class ResNetSpec(StrictSection):
    """A CIFAR-style residual CNN (He et al. 2016): a 3x3 stem, then stages of basic blocks
    (two 3x3 conv + batch-norm, identity or 1x1 projection shortcut); each stage after the first
    halves the resolution and doubles the width; global average pooling; logits.
    ``width`` multiplies every stage's filter count."""

    base_filters: int = Field(16, ge=1)
    blocks_per_stage: list[int] = Field(default_factory=lambda: [1, 1, 1])
    width: float = Field(1.0, gt=0, le=16)
    dropout: float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _blocks(self) -> "ResNetSpec":
        if not self.blocks_per_stage or min(self.blocks_per_stage) < 1:
            raise ValueError(f"blocks_per_stage = {self.blocks_per_stage}: needs >= 1 stage of >= 1 block")
        return self


# The two reference workflows' models (docs/params.md), as specs: one builder serves all.
PRESETS: dict[str, ArchSpec | ResNetSpec] = {
    # Keras notebook (CIFAR-10): Conv12-Pool-Conv12-Pool-Dense10 / Conv12-Pool-Dense10.
    "notebook_teacher": ArchSpec(conv_filters=[12, 12]),
    "notebook_student": ArchSpec(conv_filters=[12]),
    # KnowledgeDistilling repo (Fashion-MNIST): MLP 512-256-128 / MLP 128.
    "repo_teacher": ArchSpec(dense_units=[512, 256, 128]),
    "repo_student": ArchSpec(dense_units=[128]),
    # Modern small residual nets for CIFAR-sized inputs (ResNet-8/-20 of He et al.'s CIFAR family).
    "resnet8": ResNetSpec(blocks_per_stage=[1, 1, 1]),
    "resnet20": ResNetSpec(blocks_per_stage=[3, 3, 3]),
    "resnet20_w2": ResNetSpec(blocks_per_stage=[3, 3, 3], width=2.0),
}
ARCHS = (*PRESETS, "spec", "resnet")
