"""The command lines (`stylize.py`, `convert_weights.py`): flags, files, signals and progress
bars over the library, which never imports this package."""
