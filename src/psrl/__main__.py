"""``python -m psrl`` (and ``accelerate launch -m psrl``) runs the CLI."""
import sys

from psrl.cli.main import main

sys.exit(main())
