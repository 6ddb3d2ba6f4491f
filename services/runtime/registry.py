"""Maps configured model names to adapter factories. One registry per service, filled in its main()."""

from __future__ import annotations

from collections.abc import Callable

from services.runtime.adapter import ModelAdapter

AdapterFactory = Callable[..., ModelAdapter]


class ModelRegistry:
    """Known model names → factories, plus a fallback that loads any Hugging Face id or local path."""

    def __init__(self, fallback: AdapterFactory | None = None):
        self._factories: dict[str, AdapterFactory] = {}
        self._fallback = fallback

    def register(self, name: str, factory: AdapterFactory) -> None:
        if name in self._factories:
            raise ValueError(f"model name {name!r} registered twice")
        self._factories[name] = factory

    def names(self) -> list[str]:
        return sorted(self._factories)

    def create(self, spec: str, **options) -> ModelAdapter:
        """An adapter for ``spec``: a registered name, else (with a fallback) a Hugging Face id or path."""
        if spec in self._factories:
            return self._factories[spec](**options)
        if self._fallback is None:
            raise KeyError(f"unknown model {spec!r}; known: {', '.join(self.names())}")
        return self._fallback(spec, **options)
