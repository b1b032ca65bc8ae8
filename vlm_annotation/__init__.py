"""Stage 1 (annotate images, review them) and the contracts every stage shares: boxes, schema, prompts, I/O."""
