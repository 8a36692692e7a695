"""Task functions: a plain function plus the knowledge of how to send it somewhere else.

Declaring one costs nothing (no I/O, no broker). ``send`` validates the arguments against
the function's signature on the caller's side, so a bad call fails at once, in the caller's
traceback, instead of minutes later in a worker.
"""

from __future__ import annotations

import contextvars
import datetime as _dt
import inspect
import time
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from .brokers.base import NewTask
from .calls import Calling, HandleResult, result_headers
from .core import envelope as _env
from .core import payload as _payload
from .core.policy import MAX_SECONDS
from .errors import BadArguments, PayloadError, TaskAlreadyExists

if TYPE_CHECKING:
    from .registry import Registry
    from .service import Service

__all__ = ["TaskFunction", "TaskHandle", "TaskInfo", "current_task"]

_PLAIN = {str, int, float, bool, type(None), list, dict, tuple, Any, bytes, inspect.Parameter.empty}


@dataclass(frozen=True, slots=True)
class TaskHandle(HandleResult):
    """What ``send`` returns: enough to find the task again (``app.delete_task``) and,
    when it was sent with ``result_ttl=``, to wait for its result (``result()``)."""

    id: str
    queue: str
    task: str
    name: str | None = None
    _registry: Registry | None = field(default=None, repr=False, compare=False)


class TaskInfo:
    """What a running handler knows about its own task (see :func:`current_task`)."""

    __slots__ = (
        "_cancelled",
        "_ctx",
        "_deadline",
        "_result",
        "attempt",
        "headers",
        "id",
        "name",
        "queue",
        "task",
    )

    def __init__(
        self,
        id: str,
        task: str,
        queue: str,
        name: str | None,
        attempt: int,
        headers: dict[str, str] | None = None,
        deadline: float | None = None,
    ) -> None:
        self.id = id
        self.task = task
        self.queue = queue
        self.name = name
        self.attempt = attempt
        self.headers = headers if headers is not None else {}
        self._deadline = deadline  # epoch seconds, from the task's deadline header
        self._ctx: Any = None
        self._cancelled = False
        self._result: Any = None  # what the handler returned (stored when a caller waits)

    def __repr__(self) -> str:
        return (
            f"TaskInfo(id={self.id!r}, task={self.task!r}, queue={self.queue!r}, "
            f"name={self.name!r}, attempt={self.attempt})"
        )

    @property
    def retries(self) -> int:
        """How many times this task was retried before this attempt."""
        return self.attempt - 1

    @property
    def context(self) -> Any:
        """An :class:`offload.chan.Context` cancelled at the task's deadline, when the worker
        loses the task's lease, or when a draining worker's grace runs out. Made on first
        use, so handlers that never look at it pay nothing."""
        if self._ctx is None:
            from . import chan

            if self._deadline is not None:
                ctx, cancel = chan.with_timeout(
                    chan.background(), max(0.0, self._deadline - time.time())
                )
            else:
                ctx, cancel = chan.with_cancel(chan.background())
            self._ctx = (ctx, cancel)
            if self._cancelled:
                cancel()
        return self._ctx[0]

    def cancel(self) -> None:
        """Cancel the handler's context (the worker calls this; handlers need not)."""
        self._cancelled = True
        if self._ctx is not None:
            self._ctx[1]()


_MAX_DELAY = MAX_SECONDS  # ten years: past any broker's patience, within every clock

_current: contextvars.ContextVar[TaskInfo | None] = contextvars.ContextVar(
    "offload_current_task", default=None
)


def current_task() -> TaskInfo:
    """The task the calling handler is running; raises LookupError outside a handler."""
    info = _current.get()
    if info is None:
        raise LookupError("current_task() called outside a task handler")
    return info


def _type_name(tp: Any) -> str:
    return getattr(tp, "__qualname__", None) or repr(tp)


def _needs_convert(tp: Any) -> bool:
    if tp in _PLAIN:
        return False
    origin = typing.get_origin(tp)
    plain_container = origin in (list, dict, tuple)
    return not (plain_container and not any(_needs_convert(a) for a in typing.get_args(tp)))


class TaskFunction(Calling):
    """A registered task function. Calling it runs it here and now; ``send`` enqueues it;
    ``call`` sends it and waits for its result (:class:`~offload.calls.Calling`)."""

    def __init__(
        self,
        registry: Registry,
        fn: Callable[..., Any],
        name: str,
        queue: str,
        *,
        timeout: float | None = None,
        service: Service | None = None,
        memory_limit: int | None = None,
        on_oom: str | None = None,
    ) -> None:
        self.registry = registry
        #: seconds a run may take before TaskTimeout (None: the queue's timeout applies)
        self.timeout = timeout
        #: the Service this function belongs to (``"default"`` for ``@app.task``)
        self.service = service
        #: bytes a run's child process may hold (process executor); None: the service's
        self.memory_limit = memory_limit
        #: the queue a run killed for memory is retried on (None: its own queue's policy)
        self.on_oom = on_oom
        self.fn = fn
        self.name = name
        self.queue = queue
        # an ``async def`` under a plain decorator (functools.wraps) is async too
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            inspect.unwrap(fn)
        )
        try:  # resolve string annotations, so errors show `to: str`, not `to: 'str'`
            self.signature = inspect.signature(fn, eval_str=True)
        except Exception:
            self.signature = inspect.signature(fn)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn
        self._converters: dict[str, Any] | None = None
        self._check = _binding_checker(self.signature)

    def __repr__(self) -> str:
        return f"<TaskFunction {self.name} queue={self.queue!r}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    # -- sending ------------------------------------------------------------------------

    def send(self, *args: Any, **kwargs: Any) -> TaskHandle:
        """Enqueue a call with these arguments; returns once the task is durable."""
        return self.send_with(args=args, kwargs=kwargs)

    def send_with(
        self,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        delay: float | None = None,
        eta: _dt.datetime | None = None,
        queue: str | None = None,
        headers: Mapping[str, str] | None = None,
        deadline: float | _dt.datetime | None = None,
        context: Any = None,
        connection: Any = None,
        result_ttl: float | None = None,
    ) -> TaskHandle:
        """Enqueue with options: a unique ``name`` (raises :class:`TaskAlreadyExists` when
        taken), ``delay`` seconds or an aware ``eta``, another ``queue``, extra ``headers``,
        a ``deadline`` (seconds from now, or an aware datetime) that the handler's context
        enforces, a ``context`` (an ``offload.chan.Context``) whose deadline the task
        inherits, and ``connection``: a database connection whose transaction the enqueue
        joins (brokers with transactional enqueue only). ``result_ttl``: store the
        handler's result for that many seconds, for :meth:`TaskHandle.result`."""
        if result_ttl is not None:
            headers = result_headers(self.registry, headers, result_ttl)
        if context is not None:
            remaining = context.remaining()
            if remaining is not None:
                ctx_deadline = time.time() + remaining
                if deadline is None:
                    deadline = _dt.datetime.fromtimestamp(ctx_deadline, _dt.UTC)
                else:
                    as_epoch = (
                        _env.to_epoch(deadline)
                        if isinstance(deadline, _dt.datetime)
                        else time.time() + float(deadline)
                    )
                    deadline = _dt.datetime.fromtimestamp(min(as_epoch, ctx_deadline), _dt.UTC)
        new = self.build(
            args,
            kwargs,
            name=name,
            delay=delay,
            eta=eta,
            queue=queue,
            headers=headers,
            deadline=deadline,
        )
        created = self.registry.enqueue([new], connection=connection)
        if not created[0]:
            raise TaskAlreadyExists(
                f"task name {name!r} already exists in queue {new.queue!r} (or finished "
                "within its dedup window); pick another name or drop name= to allow copies",
                names=[name] if name else [],
            )
        return TaskHandle(new.id, new.queue, self.name, name, self.registry)

    def send_many(
        self, calls: Iterable[tuple[Sequence[Any], Mapping[str, Any]] | tuple[Any, ...]]
    ) -> list[TaskHandle]:
        """Enqueue many calls in one round trip. Each call is ``(args, kwargs)`` or
        ``(args, kwargs, options)`` with options of :meth:`send_with`. Every call is
        validated before anything is sent; named duplicates are reported together in one
        :class:`TaskAlreadyExists` after the others were enqueued."""
        built: list[NewTask] = []
        for i, call in enumerate(calls):
            if not isinstance(call, (tuple, list)) or len(call) not in (2, 3):
                raise BadArguments(
                    f"{self.name}.send_many: call #{i} is {call!r}; give (args, kwargs) or "
                    "(args, kwargs, {'name': ..., 'delay': ...})"
                )
            opts = dict(call[2]) if len(call) == 3 else {}
            try:
                built.append(self.build(call[0], call[1], **opts))
            except TypeError as exc:
                if isinstance(exc, BadArguments | PayloadError):
                    raise type(exc)(f"call #{i}: {exc}") from None
                raise BadArguments(f"{self.name}.send_many: call #{i}: {exc}") from None
        if not built:
            return []
        created = self.registry.enqueue(built)
        handles = [TaskHandle(t.id, t.queue, self.name, t.name, self.registry) for t in built]
        dups = [t.name or t.id for t, ok in zip(built, created, strict=True) if not ok]
        if dups:
            raise TaskAlreadyExists(
                f"{len(dups)} of {len(built)} tasks were not enqueued: names already exist "
                f"({', '.join(map(repr, dups[:5]))}{'...' if len(dups) > 5 else ''}); "
                "the others were enqueued",
                names=dups,
            )
        return handles

    def build(
        self,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        delay: float | None = None,
        eta: _dt.datetime | None = None,
        queue: str | None = None,
        headers: Mapping[str, str] | None = None,
        deadline: float | _dt.datetime | None = None,
    ) -> NewTask:
        """Validate a call and turn it into a :class:`NewTask` (no I/O). Raises
        :class:`BadArguments` for a call the signature rejects and :class:`PayloadError`
        for a value that would not arrive at the handler as it was sent."""
        # Exact-type checks first: this runs on every send, and isinstance against ABCs and
        # tuples of types costs more than the rest of the argument handling.
        if type(kwargs) is dict:
            kwargs = dict(kwargs) if kwargs else {}
        elif kwargs is None:
            kwargs = {}
        elif isinstance(kwargs, Mapping):
            kwargs = dict(kwargs)
        else:
            raise BadArguments(
                f"{self.name}: kwargs must be a mapping of parameter names to values, "
                f"got a {type(kwargs).__name__}: {kwargs!r:.100}"
            )
        if (
            type(args) is not tuple
            and type(args) is not list
            and not isinstance(args, list | tuple)
        ):
            raise BadArguments(f"{self.name}: args must be a list or tuple, got {args!r:.100}")
        try:
            self._check(*args, **kwargs)
        except TypeError as exc:
            why = str(exc).removeprefix("call() ")
            raise BadArguments(
                f"{self.name}{self.signature}: {why} (sent args={list(args)!r}, kwargs={kwargs!r})"
            ) from None
        qname = queue or self.queue
        self.registry.policy(qname)  # raises UnknownQueue with the list of queues
        if name is not None and (not isinstance(name, str) or not name or len(name) > 500):
            raise BadArguments(f"{self.name}: task name {name!r} must be a 1-500 char string")
        if delay is not None and eta is not None:
            raise BadArguments(f"{self.name}: give delay or eta, not both")
        if delay is not None and (
            isinstance(delay, bool)
            or not isinstance(delay, (int, float))
            or not 0 <= delay <= _MAX_DELAY
        ):
            raise BadArguments(
                f"{self.name}: delay {delay!r} must be seconds from 0 to {_MAX_DELAY:,.0f}"
            )
        eta_s = _env.to_epoch(eta) if eta is not None else None
        hdrs = _inherit_headers(headers, deadline)
        env = _env.Envelope(
            id=_env.new_id(),
            task=self.name,
            queue=qname,
            args=list(args),
            kwargs=kwargs,
            name=name,
            headers=hdrs,
            sent_at=time.time(),
            app=self.registry.name,
            version=self.registry.version,
        )
        try:
            payload, hinted = _env.encode_call(env)
        except _env.ArgumentRefused as exc:
            raise exc.named(_payload.param_name(self.signature, exc.pos)) from None
        if hinted:
            self._check_rebuilt(payload, args, kwargs, hinted)
        return NewTask(env.id, qname, payload, name, eta_s, float(delay or 0.0))

    async def send_async(self, *args: Any, **kwargs: Any) -> TaskHandle:
        """``send`` for async code: does not block the event loop on remote brokers."""
        new = self.build(args, kwargs)
        await self.registry.enqueue_async([new])
        return TaskHandle(new.id, new.queue, self.name, None, self.registry)

    # -- running (worker side) ----------------------------------------------------------

    def convert_args(self, args: list[Any], kwargs: dict[str, Any]) -> tuple[list, dict]:
        """Rebuild typed values (dataclasses, Structs, datetimes...) from their wire form,
        using the function's type hints; plain JSON-ish parameters pass through untouched."""
        conv = self._converters
        if conv is None:
            conv = self._converters = self._build_converters()
        if not conv:
            return args, kwargs
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise BadArguments(
                f"{self.name}{self.signature}: {exc} (payload args={args!r:.200}, "
                f"kwargs={kwargs!r:.200})"
            ) from None
        for pname, tp in conv.items():
            if pname in bound.arguments:
                try:
                    bound.arguments[pname] = msgspec.convert(
                        bound.arguments[pname], tp, strict=False
                    )
                except msgspec.ValidationError as exc:
                    raise BadArguments(f"{self.name}: argument {pname!r}: {exc}") from None
                except Exception as exc:  # e.g. a dataclass __post_init__ refusing the data
                    raise BadArguments(
                        f"{self.name}: argument {pname!r}: building {_type_name(tp)} from the "
                        f"payload failed: {type(exc).__name__}: {exc}"
                    ) from None
        return list(bound.args), dict(bound.kwargs)

    def _check_rebuilt(
        self, payload: bytes, args: Sequence[Any], kwargs: dict[str, Any], hinted: tuple
    ) -> None:
        """Dataclasses, Structs, NamedTuples and Enums travel as plain data and are rebuilt
        from type hints: run the worker's own decoding and conversion here, and refuse the
        send unless each such argument comes back as it went."""
        env = _env.decode(payload)
        try:
            got = self.convert_args(env.args, env.kwargs)
        except BadArguments as exc:
            raise BadArguments(f"{exc} (the worker would refuse this payload)") from None
        found = _payload.rebuilt_difference(self.signature, (args, kwargs), got, hinted)
        if found is not None:
            raise PayloadError(f"{self.name}: argument {found[0]!r}: {found[1]}")

    def _build_converters(self) -> dict[str, Any]:
        try:
            hints = typing.get_type_hints(self.fn)
        except Exception:
            return {}
        out = {}
        for pname, param in self.signature.parameters.items():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            tp = hints.get(pname, param.empty)
            if _needs_convert(tp):
                out[pname] = tp
        return out


class _Default:
    def __repr__(self) -> str:  # renders as a name in the generated source below
        return "_DEFAULT"


_DEFAULT = _Default()


def _binding_checker(sig: inspect.Signature) -> Callable[..., None]:
    """A do-nothing function with ``sig``'s parameters, so checking a call's arguments
    costs one native call (~0.2 us) instead of ``Signature.bind`` (~5 us): sends of many
    tasks spend their time on the wire, not here. Falls back to ``bind``."""
    params = [
        p.replace(
            annotation=inspect.Parameter.empty,
            default=_DEFAULT if p.default is not p.empty else p.empty,
        )
        for p in sig.parameters.values()
    ]
    try:
        text = str(sig.replace(parameters=params, return_annotation=sig.empty))
        ns: dict[str, Any] = {}
        exec(f"def call{text}: pass", {"_DEFAULT": _DEFAULT}, ns)
        return ns["call"]
    except Exception:
        return sig.bind


def _inherit_headers(
    headers: Mapping[str, str] | None, deadline: float | _dt.datetime | None
) -> dict[str, str]:
    """Headers for a new task; a task sent from inside a handler inherits its deadline,
    so the remaining time budget follows the work across hops."""
    if not headers and deadline is None and _current.get() is None:
        return {}
    hdrs = {str(k): str(v) for k, v in (headers or {}).items()}
    dl: float | None = None
    if deadline is not None:
        if isinstance(deadline, _dt.datetime):
            dl = _env.to_epoch(deadline)
        elif (
            isinstance(deadline, (int, float))
            and not isinstance(deadline, bool)
            and 0 <= deadline <= _MAX_DELAY
        ):
            dl = time.time() + float(deadline)
        else:
            raise BadArguments(
                f"deadline {deadline!r}: give seconds from now (0 to {_MAX_DELAY:,.0f}) or an "
                "aware datetime"
            )
    parent = _current.get()
    if parent is not None:
        inherited = parent.headers.get(_env.DEADLINE)
        if inherited is not None:
            dl = float(inherited) if dl is None else min(dl, float(inherited))
        if _env.TRACE in parent.headers and _env.TRACE not in hdrs:
            hdrs[_env.TRACE] = parent.headers[_env.TRACE]
    if dl is not None:
        hdrs[_env.DEADLINE] = repr(dl)
    return hdrs
