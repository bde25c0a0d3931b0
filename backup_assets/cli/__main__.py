"""`python -m backup_assets.cli`: the same as the `tenant-backup` command."""

import sys

from . import main

sys.exit(main())
