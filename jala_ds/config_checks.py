"""The error type and the one-line check that every config section uses (kept apart to avoid an import cycle)."""


class ConfigError(ValueError):
    """A bad recipe, override or derived value. The message is one line: the key, then the fix."""


def require(ok: bool, key: str, message: str) -> None:
    """Raise ``ConfigError("key: message")`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}: {message}")
