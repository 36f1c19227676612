"""The `views` section of params.yaml: the augmented views both students train on, the teacher's
outputs cached for each. Every view kind's keys sit here beside count, kind and flip: each kind's
knobs class is a base of ``ViewsParams``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from kdflow.views.kinds import VIEW_KINDS, CropKnobs, ShiftKnobs
from kdflow.views.mixes import MIXES


class ViewsParams(ShiftKnobs, CropKnobs):
    """For every training image, ``count`` views of the view kind ``kind``, drawn once from the
    seed, each optionally flipped. soft_targets caches the teacher's outputs for every view; in
    each epoch a student sees one view of each image (docs/methods.md)."""

    count: int = Field(8, ge=0, le=1024)  # views per training image; 0 = the images as they are
    kind: Literal[tuple(VIEW_KINDS)] = "shift"  # type: ignore[valid-type]
    flip: bool = False                   # random horizontal flip (not for digits!)
    # A view may mix two training images: none | mixup | cutmix, the ratio (mixup) or the pasted
    # area (cutmix) drawn from Beta(mix_alpha, mix_alpha).
    mix: Literal[tuple(MIXES)] = "none"  # type: ignore[valid-type]
    mix_alpha: float = Field(1.0, gt=0)
    # Where the distilled students' teacher outputs come from: cached (soft_targets, for the count
    # views) or online (distill runs the teacher on every batch, a fresh view of every image each epoch).
    teacher: Literal["cached", "online"] = "cached"
    # Store only the teacher's top_k logits per view plus the remaining probability mass, shared
    # evenly by the other classes (FKD's marginal smoothing): a smaller cache on disk for many
    # classes (distill reads it a batch at a time and expands each batch to every class). 0 = every class.
    top_k: int = Field(0, ge=0)
    # The cached logits' storage: float16 halves the cache (distill reads them back as float32).
    cache_dtype: Literal["float32", "float16"] = "float32"

    @model_validator(mode="after")
    def _views_differ(self) -> "ViewsParams":
        why = VIEW_KINDS[self.kind].identity(self)
        if self.count > 0 and why and self.mix == "none":
            raise ValueError(f"count = {self.count} with {why}, or views.mix, or views.count: 0")
        return self

    def shaping_keys(self) -> dict[str, Any]:
        """The keys that shape the views, with their values: the common ones and those of the
        kind and the mix in use (the report lists them)."""
        own = tuple(VIEW_KINDS[self.kind].knobs.model_fields)
        mix = ("mix", "mix_alpha") if self.mix != "none" else ("mix",)
        return {f"views.{key}": getattr(self, key) for key in ("count", "kind", *own, "flip", *mix, "teacher")}

