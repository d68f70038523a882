"""Bundled offline tasks: seeded generators of prompts and preference pairs."""
