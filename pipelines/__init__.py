"""Inference pipelines: text -> findings -> mask -> CT; batch generation, evaluation, export."""
