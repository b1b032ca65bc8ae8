"""Stages 5-6: ask a fine-tuned LLaVA about objects (VLMInference, predict.py) and evaluate its answers."""
