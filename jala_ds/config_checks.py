"""The error type and the one-line check that every config section uses (kept apart to avoid an import cycle)."""


class ConfigError(ValueError):
    """A bad recipe, override or derived value. The message is one line: the key, then the fix."""


class InputError(ValueError):
    """A bad command-line input other than the recipe (a folder that is not what the command reads, a port in
    use). The message is one line: the input, then the fix; the CLI prints it after the command's name."""


def require(ok: bool, key: str, message: str) -> None:
    """Raise ``ConfigError("key: message")`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}: {message}")
