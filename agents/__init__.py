"""Learned schedulers (torch, stable-baselines3), trained on the hermes_env environments (issue 6).

Install with the ``[rl]`` extra; torch must be installed first (see README).
"""
