"""What any module may read without importing the package: its version and the smoke switch."""
import os

__version__ = "0.1.0"


def smoke_mode() -> bool:
    """$SSLKIT_SMOKE=1: notebooks shrink data and epochs so CI can run them end to end."""
    return os.environ.get("SSLKIT_SMOKE", "0") not in ("", "0", "false", "False")
