"""Thin command-line layer: each module parses arguments and calls one function of a stage."""
