"""Shared machinery every stage uses: config, run directories, logging, checkpoints, precision, statistics."""
