"""What to train, given the data, the machine, the weights at hand and the time budget.

`edgecls train DATA` without a recipe plans its run here, in four steps, a module each:
1. `profile`: the data from file headers (count, classes, image sizes, grey or colour, imbalance);
2. `candidates`: models of the paper's family from scratch and the small ImageNet models whose
   weights are at hand (installed packages, the timm hub cache), at input sizes from the images'
   own scale (rounded up to a multiple of 32) down to 32;
3. `measure`: a few training steps of each timed on this machine, and its memory estimated
   (decoded data plus the activations a training batch keeps for the backward pass);
4. `choose`: keep the candidates that fit memory and the budget with enough epochs, and pick the
   best by a fixed preference: ImageNet weights on small data, then the largest input up to the
   images' own scale, then the larger model; each setting then comes from a small rule that
   gives its value and the reason the plan table (`table`) prints.
Every value the user gave wins; the plan says which choices were the user's.
"""

from edgecls.plan.candidates import UPSCALED, Candidate, candidates_for, input_sizes
from edgecls.plan.choose import (
    BUDGET_SCHEDULE,
    TINY_SMALL_DATA,
    UPSCALED_MIN_EPOCHS,
    Choice,
    Plan,
    affordable_ingredients,
    make_plan,
)
from edgecls.plan.measure import AMP_MIN_SPEEDUP, describe_machine, fast_mixed_precision
from edgecls.plan.profile import DataProfile, profile_data

__all__ = [
    "AMP_MIN_SPEEDUP",
    "BUDGET_SCHEDULE",
    "TINY_SMALL_DATA",
    "UPSCALED",
    "UPSCALED_MIN_EPOCHS",
    "Candidate",
    "Choice",
    "DataProfile",
    "Plan",
    "affordable_ingredients",
    "candidates_for",
    "describe_machine",
    "fast_mixed_precision",
    "input_sizes",
    "make_plan",
    "profile_data",
]
