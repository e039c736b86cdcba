"""Running a job: checkpoints, distributed ranks, logging, env construction, summaries, export."""
