"""Reinforcement learning: rollouts (generation engines), PPO maths and the PPO loop."""
