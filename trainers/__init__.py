"""The one PPO trainer that serves every agent."""
