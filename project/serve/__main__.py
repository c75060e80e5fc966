"""``python -m project.serve``: see :mod:`project.serve.server`."""

import sys

from project.serve.server import main

sys.exit(main())
