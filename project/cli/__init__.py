"""The training command line (``train``): its parser, the checks of its arguments and ``main``; the other commands'
parsers live in their entry points (``project/predict.py``, ``project/export.py``, ``project/bundle.py``)."""
