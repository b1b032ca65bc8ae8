"""Stage 1: annotate images (detector ensemble, BLIP descriptions, Q&A), import and export labels, score them, merge shards, review them."""
