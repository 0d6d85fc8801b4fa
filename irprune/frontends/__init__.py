"""Frontends: each turns a model from somewhere into an IR graph."""
