"""The algorithm's pure math: turn rewards, advantages, the policy loss, confidence intervals."""
