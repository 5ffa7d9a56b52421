"""robustkit: a hands-on kit for learning and experimenting with adversarial robustness.

Import the modules you need, e.g. ``from robustkit import attacks, data, models``.
Nothing runs at import time.
"""

__version__ = "0.1.0"
