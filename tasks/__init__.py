"""Downstream tasks: each adapts registry backbones to a real training engine."""
