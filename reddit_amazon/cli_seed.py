"""The ``--seed`` of the commands whose seed starts a random number generator (``benchmark``'s bootstraps in
numpy, ``lavic-ref``'s training in torch and ``random``): one range, checked before any work starts.

torch.manual_seed takes nothing beyond 64 bits and no generator here takes a negative seed, so a seed is
0 to 2**64 - 1 wherever it goes. (``reddit-amazon build --seed`` is hashed as text with each thread id, not
given to a generator: any integer works there.)
"""

from __future__ import annotations

import click

#: The seeds such a ``--seed`` takes, and its click type.
SEED_MIN, SEED_MAX = 0, 2**64 - 1
SEED = click.IntRange(SEED_MIN, SEED_MAX)
#: What its help says about the range.
SEED_RANGE_HELP = "0 to 2**64-1"
