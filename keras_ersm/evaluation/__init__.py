"""Evaluation of ERSM models."""
