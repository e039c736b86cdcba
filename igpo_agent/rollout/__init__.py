"""Rollouts: the trajectory record, episodes, token sampling, prefix sharing, the engines.

Imports ``model/`` and never ``ig/``: belief scoring comes in as a
:class:`~igpo_agent.rollout.belief_hook.BeliefHook` from the caller."""
