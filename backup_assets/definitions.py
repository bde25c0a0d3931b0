"""The code location (workspace.yaml points here): `defs`, built from the environment — one of the
edges where configuration is read (core/settings.py).

A configuration problem is a load error with one clear line naming the variables.
"""

from dagster import Definitions

from .core.errors import ConfigError
from .core.settings import Settings, load_dotenv_file
from .defs.build import build_definitions


def _load() -> Definitions:
    load_dotenv_file()
    try:
        settings = Settings.from_env()  # the code location's one read of the environment
        settings.apply_process_wide()
        return build_definitions(settings)
    except ConfigError as exc:
        raise ConfigError(f"tenant-backup configuration: {exc}") from None


defs = _load()
