"""vqclip: text to image with VQGAN + CLIP, made to watch the image evolve."""

__version__ = "0.1.0"
