"""Information gain: gold-answer tokens and belief values v_t (packed, naive, live, vLLM).

Imports ``rollout/`` and ``model/``, never the reverse: live scoring reaches the rollout as
the :class:`~igpo_agent.ig.live.LiveBeliefHook` its caller passes in."""
