"""Retention Streams: shop events in, per-user state, online learners, retention actions out."""
