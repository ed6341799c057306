"""The GPT model, swarm training, pretraining and distillation."""
