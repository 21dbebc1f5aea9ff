"""Agents (multi-task SAC variants) for the MT10 trainer."""
