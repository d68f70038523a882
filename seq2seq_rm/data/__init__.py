"""Preference and prompt records: loading, validation, adapters for public formats, templates."""
