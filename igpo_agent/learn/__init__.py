"""Learning: one policy update from scored rollouts, and the warm start's demonstrations."""
