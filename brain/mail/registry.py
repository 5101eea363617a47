"""The provider registry: which mail providers the loaded plugins offer, by name."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import pluggy

from brain.errors import PluginError
from brain.mail.provider import MailProvider

__all__ = ["ProviderRegistry"]


class ProviderRegistry:
    """Provider classes by name, filled through the `register_mail_providers` hook."""

    def __init__(self) -> None:
        self._classes: dict[str, type[MailProvider]] = {}

    @classmethod
    def from_plugins(cls, pm: pluggy.PluginManager) -> ProviderRegistry:
        """Ask every plugin for its providers."""
        registry = cls()
        pm.hook.register_mail_providers(register=registry.register)
        return registry

    def register(self, provider_class: type[MailProvider]) -> None:
        """Add a provider class; a second provider with the same name is a PluginError."""
        if not (inspect.isclass(provider_class) and issubclass(provider_class, MailProvider)):
            raise PluginError(f"register_mail_providers: {provider_class!r} is not a MailProvider subclass")
        if inspect.isabstract(provider_class):
            missing = ", ".join(sorted(provider_class.__abstractmethods__))
            raise PluginError(f"mail provider {provider_class.__name__} does not implement: {missing}")
        name = getattr(provider_class, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"mail provider {provider_class.__name__} has no name")
        existing = self._classes.get(name)
        if existing is not None and existing is not provider_class:
            raise PluginError(
                f"two mail providers are named {name!r}: {existing.__module__}.{existing.__name__} "
                f"and {provider_class.__module__}.{provider_class.__name__}"
            )
        self._classes[name] = provider_class

    def names(self) -> list[str]:
        """Registered provider names, sorted."""
        return sorted(self._classes)

    def get(self, name: str) -> type[MailProvider] | None:
        """The provider class called ``name``, if any."""
        return self._classes.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def create(self, name: str, settings: Mapping[str, Any], *, page_size: int) -> MailProvider:
        """A new provider instance (one per thread that uses it)."""
        return self._classes[name](settings, page_size=page_size)
