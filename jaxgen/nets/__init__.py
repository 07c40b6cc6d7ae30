"""Flax modules only: encoders, decoders and their building blocks. No losses."""
