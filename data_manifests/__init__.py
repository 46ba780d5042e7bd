"""Data package: the label table (labels.yaml) and dataset builders.

Only data and builders live here; it may import `shared` and nothing above it.
"""
