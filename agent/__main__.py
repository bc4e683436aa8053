"""``python -m agent`` is the same as the ``provisioning-agent`` console script."""

from agent.cli import main

raise SystemExit(main())
