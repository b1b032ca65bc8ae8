"""Stages 2-4: split annotations by image, convert them to LLaVA conversations, fine-tune LLaVA."""
