"""psrl: reinforcement-learning post-training, rewards, benchmarks and data for consistent multi-subject
image generation with flow-matching models.

Importing ``psrl`` is cheap: heavy modules (torch models, diffusers, transformers) load on first use.
"""
__version__ = "0.1.0"
