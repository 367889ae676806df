"""Subcommands of `synbt`; each module defines register(subparsers)."""
