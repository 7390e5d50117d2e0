"""Example task files. Discovery imports each `*.py` here not starting with `_`.

This file only makes the folder a package for type checkers; discovery does not run it.
"""
