"""Tool providers: what serves the tools an agent run may call, and the set a runtime owns.

A `ToolProvider` has a lifecycle (`start`, `close`, `health`), lists `ToolSpec`s
(agent.tools) and makes fresh host-side tools for each run (`tools_for_run`): async
callables the sandbox proxies, by name, from the jailed code (`web_search(...)`). Each such
callable is a `ProvidedTool`: it carries its spec (the prompt lists it from there) and, for
tools from outside the project, checks the call's arguments against the spec's JSON
schema on the host before the call leaves (positional arguments bind in signature order).
A failure raises; the sandbox's tool channel turns it into an exception inside the code,
which the model reads in its observation.

`ToolSet` is the runtime's set of providers: started with the app or job (a provider that
cannot start is an error at start, naming it), closed with it, reported by `health()`
(GET /readyz), listed by `specs()` (GET /v1/tools) and narrowed per request by
`tools_for_run(names)` (unknown names raise `UnknownToolsError` naming them). A tool name
served by two providers is refused at start.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, Protocol

from agent.executor import ToolFn
from agent.tools import ToolSpec, parameter_order

__all__ = [
    "ProvidedTool",
    "ToolArgumentError",
    "ToolProvider",
    "ToolProviderError",
    "ToolSet",
    "UnknownToolsError",
    "bind_arguments",
]

log = logging.getLogger(__name__)


class ToolProviderError(Exception):
    """A provider cannot start or serve; the message names it and says why."""


class ToolArgumentError(ValueError):
    """A call's arguments do not fit the tool's schema (raised on the host, before the call)."""


class UnknownToolsError(ValueError):
    """A request named tools that are not configured."""

    def __init__(self, unknown: Sequence[str], known: Sequence[str]) -> None:
        self.unknown = list(unknown)
        self.known = list(known)
        listed = ", ".join(self.known) or "none"
        super().__init__(f"unknown tools: {', '.join(self.unknown)} (configured: {listed})")


class ToolProvider(Protocol):
    name: str
    """Shown in /readyz and in each spec's `provider` (e.g. `web_search`, `mcp:time`)."""

    async def start(self) -> None:
        """Connect / spawn what the tools need; raises ToolProviderError when it cannot."""
        ...

    async def close(self) -> None:
        """Release everything started (processes, connections). Idempotent."""
        ...

    async def health(self) -> dict[str, Any]:
        """A short report; raises when the provider cannot serve calls now."""
        ...

    def specs(self) -> list[ToolSpec]:
        """The tools served now, in a stable order."""
        ...

    def tools_for_run(self) -> dict[str, ToolFn]:
        """Fresh host-side tools for one run (ProvidedTool values), keyed by spec name."""
        ...


def bind_arguments(
    spec: ToolSpec, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    """The call's arguments as one keyword mapping: positional ones bound in the
    signature's order (required arguments first), then checked against the schema."""
    order = parameter_order(spec.parameters)
    if len(args) > len(order):
        raise ToolArgumentError(
            f"{spec.name}() takes {len(order)} positional arguments but {len(args)} were given; "
            f"the signature is {spec.signature}"
        )
    bound = dict(zip(order, args, strict=False))
    extra = spec.parameters.get("additionalProperties")
    open_ended = not order or extra not in (None, False)  # else unknown names are a TypeError
    for key, value in kwargs.items():
        if key in bound:
            raise ToolArgumentError(f"{spec.name}() got multiple values for argument {key!r}")
        if key not in order and not open_ended:
            raise ToolArgumentError(
                f"{spec.name}() got an unexpected keyword argument {key!r}; "
                f"the signature is {spec.signature}"
            )
        bound[key] = value
    _check_schema(spec, bound)
    return bound


@functools.lru_cache(maxsize=1024)
def _validator(spec: ToolSpec) -> Any:
    """The compiled validator of a spec's argument schema (specs hash by identity)."""
    import jsonschema

    schema = dict(spec.parameters) or {"type": "object"}
    return jsonschema.validators.validator_for(schema)(schema)


def _check_schema(spec: ToolSpec, arguments: dict[str, Any]) -> None:
    import jsonschema

    try:
        validator = _validator(spec)
        error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
    except (jsonschema.exceptions.SchemaError, jsonschema.exceptions.RefResolutionError) as e:
        log.warning(
            "tool %s has an unusable argument schema (%s): arguments not checked", spec.name, e
        )
        return
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path)
        at = f" (at {where})" if where else ""
        raise ToolArgumentError(
            f"{spec.name}() arguments do not fit its schema{at}: {error.message}; "
            f"the signature is {spec.signature}"
        )


class ProvidedTool:
    """One tool of one run: calls `invoke(arguments)`; `spec` is what the prompt lists."""

    def __init__(
        self,
        spec: ToolSpec,
        invoke: Callable[..., Awaitable[str]],
        *,
        check_arguments: bool = True,
    ) -> None:
        self.spec = spec
        self._invoke = invoke
        self._check = check_arguments
        self.__name__ = spec.name

    async def __call__(self, *args: Any, **kwargs: Any) -> str:
        if not self._check:  # a built-in tool keeps its own handling of odd arguments
            return await self._invoke(*args, **kwargs)
        return await self._invoke(**bind_arguments(self.spec, args, kwargs))


class ToolSet:
    """The providers a runtime owns, in configuration order (see the module docstring)."""

    def __init__(self, providers: Sequence[ToolProvider] = ()) -> None:
        self.providers = list(providers)
        self._started = False

    async def start(self) -> None:
        """Start every provider; a started set is left as it is (a job may hand its runtime
        to code that starts it again)."""
        if self._started:
            return
        results = await asyncio.gather(*(p.start() for p in self.providers), return_exceptions=True)
        failed = [
            (p, r)
            for p, r in zip(self.providers, results, strict=True)
            if isinstance(r, BaseException)
        ]
        if failed:
            await self.close()
            provider, error = failed[0]
            if isinstance(error, ToolProviderError):
                raise error
            raise ToolProviderError(f"tool provider {provider.name} did not start: {error}")
        self._started = True
        self._check_unique()

    def _check_unique(self) -> None:
        owners: dict[str, str] = {}
        for provider in self.providers:
            for spec in provider.specs():
                if spec.name in owners:
                    raise ToolProviderError(
                        f"tool {spec.name!r} is served by both {owners[spec.name]} and "
                        f"{provider.name}: remove one of them from the configuration"
                    )
                owners[spec.name] = provider.name

    async def close(self) -> None:
        for provider in reversed(self.providers):
            try:
                await provider.close()
            except Exception:
                log.exception("closing tool provider %s failed", provider.name)
        self._started = False

    def specs(self) -> list[ToolSpec]:
        seen: set[str] = set()
        out = []
        for provider in self.providers:
            for spec in provider.specs():
                if spec.name not in seen:
                    seen.add(spec.name)
                    out.append(spec)
        return out

    def names(self) -> list[str]:
        return [s.name for s in self.specs()]

    def check(self, names: Collection[str]) -> None:
        """Raises UnknownToolsError when a name in `names` is not served."""
        known = self.names()
        unknown = [n for n in dict.fromkeys(names) if n not in known]
        if unknown:
            raise UnknownToolsError(unknown, known)

    def tools_for_run(self, names: Collection[str] | None = None) -> dict[str, ToolFn]:
        """Fresh tools for one run: all of them, or those in `names` (each must be served)."""
        if names is not None:
            self.check(names)
        tools: dict[str, ToolFn] = {}
        for provider in self.providers:
            for name, fn in provider.tools_for_run().items():
                if name not in tools and (names is None or name in names):
                    tools[name] = fn
        return tools

    async def health(self) -> dict[str, dict[str, Any]]:
        """Per provider: {"ok": bool, "tools": [...], "error"?: str, ...its own report}."""

        async def one(provider: ToolProvider) -> dict[str, Any]:
            tools = [s.name for s in provider.specs()]
            try:
                report = await asyncio.wait_for(provider.health(), 5.0)
            except TimeoutError:
                return {"ok": False, "tools": tools, "error": "no answer within 5 s"}
            except Exception as e:
                return {"ok": False, "tools": tools, "error": f"{type(e).__name__}: {e}"}
            return {"ok": True, "tools": tools, **report}

        reports = await asyncio.gather(*(one(p) for p in self.providers))
        return {p.name: r for p, r in zip(self.providers, reports, strict=True)}
