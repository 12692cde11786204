"""Face pipeline: detection, alignment, parsing, masking, paste-back."""
