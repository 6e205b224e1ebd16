"""Chapter 03's settings: where the matched control is selected, the top-k overlaps, the image grids."""
from __future__ import annotations

from dataclasses import dataclass

SELECT_ON = ("holdout", "train")  # where the matched control is selected: held-out training images, or the training set


@dataclass(frozen=True)
class ConfidenceSettings:
    """Profile-level settings of chapter 03."""

    select_on: str  # "holdout": unused training images; "train": the training images themselves
    holdout: int  # size of the held-out selection slice (0 with "train")
    topk: tuple[int, ...]  # k of the top-k / bottom-k Jaccard overlaps
    n_show: int  # images per direction in a grid
    group_size: int  # samples per group (AT ≫ std, std ≫ AT, random) for the group measures

    def __post_init__(self) -> None:
        if self.select_on not in SELECT_ON:
            raise ValueError(f"select_on={self.select_on!r}: one of {', '.join(SELECT_ON)}")
        if self.holdout < 0 or (self.select_on == "holdout") != (self.holdout > 0):
            raise ValueError(f"holdout={self.holdout!r}: > 0 with select_on='holdout', 0 with 'train'")
        if not self.topk or min(self.topk) < 1 or self.n_show < 1 or self.group_size < 1:
            raise ValueError("topk (non-empty), n_show and group_size must be >= 1")
