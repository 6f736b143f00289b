"""Faust agents: one module per arrow of the data flow."""
