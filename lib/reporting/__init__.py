"""Reporting: findings files assembled into the README, figure helpers."""
