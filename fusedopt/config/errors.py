"""Exception types of the config layer.

mmengine reports several config mistakes with ``assert`` (AssertionError). fusedopt raises
ValueError/TypeError for them, as a subclass that is *also* an AssertionError, so code written
against mmengine (``except AssertionError``) keeps working.
"""


class ConfigValueError(ValueError, AssertionError):
    """A config value is out of range or missing (also an AssertionError, as in mmengine)."""


class ConfigTypeError(TypeError, AssertionError):
    """A config value has the wrong type or an unknown key (also an AssertionError)."""


class ConfigKeyError(KeyError, AssertionError):
    """A name is missing from a container (also an AssertionError, as in mmengine)."""


__all__ = ["ConfigValueError", "ConfigTypeError", "ConfigKeyError"]


class UnknownTypeError(KeyError, TypeError):
    """An unknown ``type`` name. A KeyError like the registry's; also a TypeError, which is what
    mmengine's constructor raises for an unknown optimizer type (it calls
    ``inspect.signature(None)``)."""

    def __str__(self):
        # KeyError's str() is the repr of its argument: the message would print in quotes
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


__all__ += ["UnknownTypeError"]
