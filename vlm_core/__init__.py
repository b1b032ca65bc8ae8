"""What every stage shares, and nothing else: errors and runtime (``runtime``), streaming I/O
(``io_utils``), the annotation schema (``schema``), boxes (``boxes``) and every model family's box
frame and chat layout (``families``), images (``images``), the prompt format and image token
(``prompts``), the LLaVA record format (``llava_format``), the model folder (``model_dir``) and the
prediction record (``predictions``).

Imports point one way: the stage packages (``vlm_annotation``, ``vlm_training``, ``vlm_inference``)
import this package; it imports none of them.
"""
