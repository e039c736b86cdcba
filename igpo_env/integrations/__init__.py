"""Adapters that plug the SearchQA environments into other training libraries.

- :mod:`igpo_env.integrations.trl`: Hugging Face TRL's ``GRPOTrainer(environment_factory=...)``
  (``pip install igpo[trl]``; TRL itself is imported only when a TRL-only helper is called).
"""
