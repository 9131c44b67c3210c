"""Training runs: TRL supervised fine-tuning and GRPO through the environment, and the from-scratch nanoLlama."""
