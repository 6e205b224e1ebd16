"""Chapter 03's settings: the selection set and grid of the accuracy-matched control, the top-k overlaps, the grids."""
from __future__ import annotations

from dataclasses import dataclass

SELECT_ON = ("holdout", "train")  # where the matched control is selected: held-out training images, or the training set


@dataclass(frozen=True)
class ConfidenceSettings:
    """Profile-level settings of chapter 03."""

    select_on: str  # "holdout": training images no model trains on; "train": the training images themselves
    holdout: int  # size of the held-out selection slice (0 with "train")
    topk: tuple[int, ...]  # k of the top-k / bottom-k Jaccard overlaps
    n_show: int  # images per direction in a grid
    group_size: int  # samples per group (AT ≫ std, std ≫ AT, random) for the group measures
    grid_min: int  # smallest training-subset size n of the matched control's log grid (neighbours √2 apart)
    calib_seeds: int  # the first N seeds calibrate n (their mean selection accuracy), in parallel on 2 cores

    def __post_init__(self) -> None:
        if self.select_on not in SELECT_ON:
            raise ValueError(f"select_on={self.select_on!r}: one of {', '.join(SELECT_ON)}")
        if self.holdout < 0 or (self.select_on == "holdout") != (self.holdout > 0):
            raise ValueError(f"holdout={self.holdout!r}: > 0 with select_on='holdout', 0 with 'train'")
        if not self.topk or min(self.topk) < 1 or self.n_show < 1 or self.group_size < 1:
            raise ValueError("topk (non-empty), n_show and group_size must be >= 1")
        if self.grid_min < 1 or self.calib_seeds < 1:
            raise ValueError(f"grid_min={self.grid_min} and calib_seeds={self.calib_seeds} must be >= 1")
