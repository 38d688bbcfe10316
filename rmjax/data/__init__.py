"""Preference data: the example schema, readers, the synthetic gold-reward task."""
