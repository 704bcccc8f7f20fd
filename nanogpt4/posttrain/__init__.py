"""Post-training: SFT, reward model, RBRMs, PPO, DPO (issue 11)."""
