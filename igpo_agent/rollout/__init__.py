"""Rollouts: the trajectory record, episodes, token sampling, KV-cache helpers, the engines."""
