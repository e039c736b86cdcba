"""Top-level test setup: the package's thread policy before any test module imports torch.

``import igpo_agent`` sets ``OMP_WAIT_POLICY=PASSIVE`` (busy-waiting OpenMP threads make
small-model generation ~30x slower on a 2-core machine). OpenMP reads it once, when torch
loads, so it must come before the first ``import torch`` of the session: pytest imports
this file before any test module.
"""

import igpo_agent  # noqa: F401
