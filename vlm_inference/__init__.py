"""Stages 5-6: ask a fine-tuned LLaVA about objects (VLMInference, predict.py) and evaluate its answers.

``from vlm_inference import VLMInference`` works; the class is imported on first use, so
``import vlm_inference`` (and the torch-free evaluation modules) never load torch.
"""

_LAZY = ("VLMInference", "InferenceInputError", "BoxPromptWarning")
__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        from vlm_inference import vlm_inference
        return getattr(vlm_inference, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
