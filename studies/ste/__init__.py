"""STE: a model learns a new tool by simulated trial and error (Wang et al. 2024, arXiv 2403.04746).

``explore`` (imagine queries, try them on the real tool, reflect; long- and short-term memory),
``distill`` (keep grounded successful trajectories, dedupe, cap), ``evaluate`` (held-out test queries,
exact scoring through the environment; in-context demonstrations as a baseline), ``continual``
(tools in rounds, fine-tuning with or without replay). The command is ``python -m studies.ste``.
"""
