"""``python -m provisioning_lab``: the lab command line."""

import sys

from provisioning_lab.cli import main

sys.exit(main())
