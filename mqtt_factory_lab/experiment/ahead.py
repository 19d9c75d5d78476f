"""Runs set in motion ahead of the experiments that judge them, so the broker's clock ticks once.

Some rules can only be seen by waiting on the broker: a keepalive that runs out (Mosquitto
2.0 looks for silent clients once every 6 s), a will delay, a session expiry, a device's own
reconnect delay. Such a wait cannot be shortened without losing what it proves, but it need
not be spent idle: a module-scoped fixture sets the run in motion at the module's first
experiment (:func:`start_ahead`, from an autouse fixture), the other experiments run while the
broker's clock ticks, and the experiment that judges the run finds it finished, or waits only
for what is left.

* :class:`Ahead` — a run started at once, closed with its fixture; a failure to start it is
  kept for the experiment that judges it, not raised at whichever experiment came first;
* :func:`ahead_scope`, :func:`judged_by` — a run that outlives its module in a serial session
  of several lessons, and the fixtures through which experiments judge runs (their
  experiments run at the end of such a session: ``mqtt_factory_lab.fixtures.overlap``);
* :func:`start_ahead`, :func:`users` — set up the module's ahead fixtures that an experiment
  selected to run in this process uses;
* :func:`per_protocol` — one run per MQTT version that those experiments are selected with;
* :class:`ModuleClients` — ``mqtt_client`` for a module-scoped run: connected
  :class:`~mqtt_factory_lab.core.client.RecordingClient` s, all disconnected at the end;
* :func:`own_broker` — a broker for the runs alone, whose log no experiment reads;
* :func:`seconds_left` — what is left of a deadline counted from the run's own moment;
* :func:`launchers` — ``factory_launcher`` for a module-scoped run: one launcher of the
  solution per MQTT version, under a topic root of the run's own.

Each judging experiment still owns its outcome: its run has its own topic root, client ids and
deadlines counted from the run's own start, so it passes or fails alike in any order, alone, or
on an xdist worker (where it is simply not ahead of anything, and waits the whole wait).

In a serial session of several lessons the runs' fixtures (``scope=ahead_scope``) live for the
session, and the experiments that judge them (those using a fixture named in :func:`judged_by`)
run after every other experiment of the session: a module's wait then hides behind the
following modules instead of only behind its own.

Example::

    @pytest.fixture(scope=ahead_scope)
    def silent_clients(broker_pool):
        with Ahead(lambda stack: pause_clients(stack, broker_pool)) as run:
            yield run

    @pytest.fixture(scope="module", autouse=True)
    def _start_ahead(request):
        start_ahead(request, "silent_clients")

    judged_by("silent_clients")

    def test_will_of_a_silent_client(silent_clients):
        run = silent_clients.result()
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import pytest

from mqtt_factory_lab.brokers import Broker, BrokerError, BrokerUnavailable
from mqtt_factory_lab.core.client import RecordingClient
from mqtt_factory_lab.core.factory import FactoryLauncher
from mqtt_factory_lab.core.roles import RoleError
from mqtt_factory_lab.core.solution import ManifestError, Solution

T = TypeVar("T")

#: what a run may fail with and still be reported by the experiment that judges it: a harness
#: error, a solution's program that would not start, or pytest's own fail and skip
KEPT = (Exception, pytest.fail.Exception, pytest.skip.Exception)


#: names of the fixtures through which an experiment judges a run started ahead (all lessons)
JUDGING: set[str] = set()


def judged_by(*fixtures: str) -> None:
    """Name the fixtures through which experiments judge runs started ahead: in a serial
    session of several lessons their experiments run last (``fixtures/overlap.py``)."""
    JUDGING.update(fixtures)


#: the grader's child plugin (by name: the grader is not this package's to import). Its child
#: runs a submission's lessons one after the other, each with its own brokers, time limit and
#: sweep of the programs it left: no run may outlive its lesson there.
GRADING_CHILD = "mqtt_factory_lab.grading.child"


def overlapping(config: pytest.Config) -> bool:
    """Whether this process runs the experiments itself, one after the other, and its lessons
    may overlap: not an xdist worker (whose sibling workers may judge what it starts), not
    xdist's controller, and not the grader's child (each lesson alone, swept when it ends)."""
    if hasattr(config, "workerinput") or config.pluginmanager.has_plugin(GRADING_CHILD):
        return False
    return not (
        getattr(config.option, "numprocesses", None) or getattr(config.option, "dist", "no") != "no"
    )


def ahead_scope(fixture_name: str, config: pytest.Config) -> Literal["session", "module"]:
    """``@pytest.fixture(scope=ahead_scope)``: the scope of a module's run started ahead and
    of what it stands on. ``session`` in a serial run, so that in a session of several lessons
    the run is still open when its judging experiments come at the end; ``module`` under
    xdist, where each worker closes what it started with the module, as before. In a run of
    one lesson both end at the same moment."""
    return "session" if overlapping(config) else "module"


def module_path(request: pytest.FixtureRequest) -> Path:
    """The path of the lesson module whose experiments ``request``'s fixture serves.

    pytest withholds ``request.path`` from a session-scoped fixture; a run's fixture
    (:func:`ahead_scope`) is defined in its lesson (or serves one lesson), so the experiment
    that set it up tells the module.
    """
    if getattr(request, "scope", "module") == "session":
        return request._pyfuncitem.path
    return request.path


class Ahead(Generic[T]):
    """A run that ``start(stack)`` sets in motion, in a thread of its own so that the
    experiments go on meanwhile; what it registers on ``stack`` is undone, in that thread, by
    :meth:`close` (or at the end of a ``with`` block).

    :param start: starts the programs and clients of the run and returns what the judging
        experiment needs; its own deadlines bound it (a program's ready line, a connect).
    :raises nothing: a failure is kept and raised by :meth:`result`, in the experiment that
        judges the run; a solution's program that would not start (``RoleError``) or a broker
        that would not (``BrokerError``) fails it with that message alone, as ``or_fail`` and
        ``broker_or_fail`` do.
    """

    def __init__(self, start: Callable[[contextlib.ExitStack], T]) -> None:
        self._value: T | None = None
        self._error: BaseException | None = None
        self._started = threading.Event()
        self._closing = threading.Event()

        def run() -> None:
            # The thread lives until close(): a program's parent-death signal (``setpriv
            # --pdeathsig``) follows the thread that started it, not the process.
            with contextlib.ExitStack() as stack:
                try:
                    self._value = start(stack)
                except KEPT as error:
                    self._error = error
                finally:
                    self._started.set()
                self._closing.wait()

        self._thread = threading.Thread(target=run, name="mqtt-lab-ahead", daemon=True)
        self._thread.start()

    def result(self) -> T:
        """What ``start`` returned, once it has. :raises: what it failed with."""
        __tracebackhide__ = True
        self._started.wait()
        if isinstance(self._error, BrokerUnavailable):
            pytest.fail(str(self._error), pytrace=False)
        if isinstance(self._error, BrokerError):
            pytest.fail(f"the broker could not start:\n{self._error}", pytrace=False)
        if isinstance(self._error, (RoleError, ManifestError)):
            pytest.fail(str(self._error), pytrace=False)
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    def close(self) -> None:
        """Undo what the run started (programs, clients), in reverse order, and wait for it."""
        self._closing.set()
        self._thread.join()

    def __enter__(self) -> Ahead[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def users(request: pytest.FixtureRequest, fixture: str) -> list[pytest.Item]:
    """The experiments of ``request``'s module, selected to run, that use ``fixture``.

    Under xdist every worker holds the whole selection, so a worker may start a run that
    another worker judges: it costs a run, never an outcome.
    """
    path = module_path(request)
    return [
        item
        for item in request.session.items
        if item.path == path and fixture in getattr(item, "fixturenames", ())
    ]


def start_ahead(request: pytest.FixtureRequest, *fixtures: str) -> None:
    """Set up each module-scoped fixture in ``fixtures`` now if a selected experiment uses it.

    Call it from the module's autouse, module-scoped fixture: its runs then start at the
    module's first experiment, whichever that is. A fixture that fails or skips here is not
    that experiment's business: pytest keeps the outcome and gives it to each experiment that
    uses the fixture.
    """
    for name in fixtures:
        if users(request, name):
            with contextlib.suppress(*KEPT):
                request.getfixturevalue(name)


def own_broker(stack: contextlib.ExitStack, pool: Any, variant: str = "open") -> Broker:
    """A broker of ``pool`` (the ``broker_pool`` fixture) for a module's runs alone, released
    when ``stack`` closes. What the runs' programs do in the background then never shows in
    the shared broker's log, which experiments read to tell whose connection is whose."""
    broker = pool.start(variant)
    stack.callback(pool.release, broker)
    return broker


def seconds_left(since: float, budget: float) -> float:
    """Seconds left until ``budget`` seconds after the ``time.monotonic()`` moment ``since``
    (at least 0.1, rounded for messages): a judging experiment's timeout, counted from the
    moment its run paused or dropped something, not from the experiment's own start."""
    return round(max(0.1, since + budget - time.monotonic()), 1)


def per_protocol(
    request: pytest.FixtureRequest, start: Callable[[contextlib.ExitStack, str], T]
) -> dict[str, Ahead[T]]:
    """For the module-scoped fixture of ``request``: one :class:`Ahead` run per MQTT version
    that its selected users run with (their ``protocol`` parameter), ``start(stack, protocol)``
    each, all under way at once. The caller closes them."""
    protocols = dict.fromkeys(
        item.callspec.params["protocol"]
        for item in users(request, request.fixturename or "")
        if "protocol" in getattr(getattr(item, "callspec", None), "params", {})
    )
    return {p: Ahead(lambda stack, p=p: start(stack, p)) for p in protocols}


class ModuleClients:
    """``mqtt_client`` for a run that outlives one experiment: connected clients on ``broker``.

    :param broker: the broker they connect to (its listener for each MQTT version).
    :param name: what their client ids start with (plus a counter and a random suffix).
    Call it like ``mqtt_client``; :meth:`close` disconnects every client it made.
    """

    def __init__(self, broker: Broker, name: str) -> None:
        self.broker = broker
        self.name = re.sub(r"[^A-Za-z0-9_-]+", "-", name)[:40]
        self.clients: list[RecordingClient] = []

    def __call__(
        self,
        client_id: str | None = None,
        *,
        protocol: str = "5",
        connect: bool = True,
        **options: Any,
    ) -> RecordingClient:
        """A client (``clean_start``, ``session_expiry``, ``will`` as ``RecordingClient``)."""
        settings = self.broker.connection.for_protocol(protocol)
        client = RecordingClient(
            settings.host,
            settings.port,
            client_id or f"{self.name}-{len(self.clients) + 1}-{uuid.uuid4().hex[:6]}",
            protocol=protocol,
            describe_broker=self.broker.health,
            connection=settings,
            **options,
        )
        self.clients.append(client)
        if connect:
            client.connect()
        return client

    def close(self) -> None:
        for client in self.clients:
            client.disconnect()


def launchers(
    config: pytest.Config, solution: Solution, broker: Broker, protocols: list[str]
) -> dict[str, FactoryLauncher]:
    """One launcher of ``solution`` per MQTT version in ``protocols``, on ``broker``, all under
    one new topic root, with the run's ``--lab-seed`` and ``--time-scale`` (as
    ``factory_launcher`` has them). The caller closes them (they are context managers).
    """
    root = f"lab/{uuid.uuid4().hex[:8]}/factory"
    return {
        protocol: FactoryLauncher(
            solution,
            broker,
            root,
            seed=config.getoption("--lab-seed"),
            time_scale=config.getoption("--time-scale"),
            protocol=protocol,
        )
        for protocol in protocols
    }


def params_of(item: Any) -> dict[str, Any]:
    """An experiment's parameters (``{}`` when it has none)."""
    return dict(getattr(getattr(item, "callspec", None), "params", {}))


class AheadCases:
    """One :class:`Ahead` run per experiment *case*: its kind and every parameter of it, the
    slow lane's repetitions (``lab_repetition``) included, so a repeated verdict is never one
    run judged many times.

    :param request: the module-scoped fixture's request.
    :param starts: ``{kind: start(stack, params)}``; ``kind`` is the name of the function-scoped
        fixture through which an experiment asks for its run (see :meth:`start_selected`).
    :param at_once: how many runs set themselves up at a time (the others queue): twenty
        repetitions of a two-broker run must not starve a two-core machine.

    On a serial run :meth:`start_selected` starts every selected case at once; under xdist
    another worker may run a sibling case, so each experiment starts only its own there.
    Each experiment's fixture calls :meth:`start` (a no-op when its run is under way), judges
    ``run(key).result()`` and :meth:`finish` es it, which closes it while the next experiment
    runs; :meth:`close`, with the module, waits until every run is closed.
    """

    def __init__(
        self,
        request: pytest.FixtureRequest,
        starts: dict[str, Callable[[contextlib.ExitStack, dict[str, Any]], Any]],
        at_once: int = 6,
    ) -> None:
        self._request = request
        self._starts = starts
        self._runs: dict[tuple, Ahead[Any]] = {}
        self._slots = threading.BoundedSemaphore(at_once)
        self._lock = threading.Lock()
        self._closing: list[threading.Thread] = []

    @staticmethod
    def key(kind: str, params: dict[str, Any]) -> tuple:
        return (kind, tuple(sorted((n, repr(v)) for n, v in params.items())))

    def start(self, kind: str, params: dict[str, Any]) -> tuple:
        """Start the ``kind`` run for an experiment with ``params`` unless it is under way."""
        key = self.key(kind, params)
        with self._lock:
            if key not in self._runs:
                self._runs[key] = Ahead(lambda stack: self._start(stack, kind, params))
        return key

    def _start(self, stack: contextlib.ExitStack, kind: str, params: dict[str, Any]) -> Any:
        with self._slots:
            return self._starts[kind](stack, params)

    def run(self, key: tuple) -> Ahead[Any]:
        return self._runs[key]

    def start_selected(self) -> None:
        """On a serial run, start the run of every selected experiment of the module."""
        if hasattr(self._request.config, "workerinput"):
            return
        for kind in self._starts:
            for item in users(self._request, kind):
                self.start(kind, params_of(item))

    def finish(self, key: tuple) -> threading.Thread | None:
        """Close the run of ``key`` (its brokers, programs and clients) in the background, while
        the next experiment runs; :meth:`close` waits for it. Returns the closing thread."""
        with self._lock:
            run = self._runs.pop(key, None)
        if run is None:
            return None
        closing = threading.Thread(target=run.close, name="mqtt-lab-ahead-close", daemon=True)
        closing.start()
        self._closing.append(closing)
        return closing

    def __enter__(self) -> AheadCases:
        """Start the selected runs (:meth:`start_selected`); :meth:`close` on the way out,
        and also when starting them fails part way (the runs already started close)."""
        try:
            self.start_selected()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every run still open, and wait until every run is closed."""
        for key in list(self._runs):
            self.finish(key)
        for closing in self._closing:
            closing.join()


def case_run(kind: str, cases: str) -> Any:
    """The function-scoped fixture ``kind``: the experiment's own run of that kind, from the
    module's :class:`AheadCases` fixture named ``cases`` (under way since the module's first
    experiment on a serial run, started now otherwise), closed in the background once the
    experiment is over. ``loop_window = case_run("loop_window", "bridge_runs")`` in a lesson."""

    @pytest.fixture(name=kind)
    def run_of_the_experiment(request: pytest.FixtureRequest) -> Iterator[Ahead[Any]]:
        runs: AheadCases = request.getfixturevalue(cases)
        key = runs.start(kind, params_of(request.node))
        yield runs.run(key)
        runs.finish(key)

    run_of_the_experiment.__doc__ = f"The experiment's own {kind.replace('_', ' ')} run."
    judged_by(kind)
    return run_of_the_experiment
