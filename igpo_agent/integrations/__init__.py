"""Integrations of the IGPO trainer with other training libraries.

- :mod:`igpo_agent.integrations.turns`: TRL rollouts (completion ids + tool mask) as IGPO
  turns, their belief values and per-token advantages (pure; no TRL import).
- :mod:`igpo_agent.integrations.trl_igpo`: ``IGPOTrainer`` / ``IGPOConfig``, a TRL
  ``GRPOTrainer`` whose advantages are IGPO's (needs ``pip install igpo[trl]``).

Nothing here is imported eagerly: ``import igpo_agent.integrations`` never loads TRL.
"""
