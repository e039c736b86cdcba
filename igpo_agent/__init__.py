"""igpo_agent: the IGPO learner (the algorithm: docs/ALGORITHM.md; usage: the README).

Docstrings cite the algorithm's sections as ALGORITHM "Section" (docs/ALGORITHM.md).

Importing the package sets torch's threading policy before torch loads: on small CPU
machines the default busy-waiting OpenMP policy makes generation ~30x slower.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
