"""`sammoe demo`: ``run`` drives the stages, ``plugins`` lays out the example experts when they are not
installed, ``colin27`` the real-MRI test set, ``report`` the markdown of what was measured."""

from sammoe.cli.demo.run import main

__all__ = ["main"]
