"""``python -m cuhouse bench ...``: see ``cuhouse.bench``."""

import sys

from .bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
