"""The code location (workspace.yaml points here): `defs`, built from the environment.

A configuration problem is a load error with one clear line naming the variables.
"""

from dagster import Definitions

from .core.errors import ConfigError
from .core.settings import load_dotenv_file
from .defs.build import build_definitions


def _load() -> Definitions:
    load_dotenv_file()
    try:
        return build_definitions()
    except ConfigError as exc:
        raise ConfigError(f"tenant-backup configuration: {exc}") from None


defs = _load()
