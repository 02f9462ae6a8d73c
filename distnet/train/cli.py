"""Placeholder: filled in by the work that owns this command."""


def add_arguments(parser):
    pass


def run(args):
    raise SystemExit("not implemented yet")
