"""The door: a fail-secure strike relay, door supervision and the access rules.

Hardware goes through gpiozero (the optional extra ``door``), imported only
when a :class:`~edge.door.controller.DoorController` is built. ``door.pin_factory = "mock"`` uses
gpiozero's own ``MockFactory``: the daemon and ``facegate door test`` then
run without a Pi, and tests read the pin states over time.

**Who opens the door.** Access is granted only for a decision handed over
in-process by the daemon loop, straight from the k-of-n tracker, that is all
of (:func:`edge.door.policy.judge`, in this order):

1. not during a lockout;
2. not while the tamper alarm is in force, with ``door.deny_while_tampered``;
3. ``recognized`` with a name (``unknown`` is denied, and counts towards a lockout);
   with ``[liveness] mode = "require"``, a track whose liveness passed (a
   prop is denied ``spoof``; no verdict within ``liveness.max_wait_s``,
   ``no_liveness``: :mod:`edge.decide.gate`);
4. not seen before (the same decision twice is a replay) and younger than
   ``door.max_decision_age_ms`` by the wall clock (frame timestamps are
   wall-clock capture times);
5. for a person in ``door.allow`` (a name, or ``group:NAME`` with the groups
   from the gallery's person metadata);
6. inside the person's weekly schedule, in the device's time zone, when a
   schedule applies to them; a schedule needs a synced clock
   (:func:`edge.clock.clock_synced`), without one it denies.

The rules are a table (:data:`edge.door.policy.RULES`): a new one is a
function and a row. Entries of ``allow`` and ``schedule`` that match nobody
in the gallery are refused or warned about at start
(:func:`edge.door.policy.check_names`).

Every decision, granted or not, is one audit entry (:mod:`edge.door.audit`) and one
MQTT event through the outbox. MQTT plays no part in the decision: the door
never reads the event topic or the outbox, and works with MQTT disabled. The
only broker message that can open it is a signed remote unlock
(:func:`edge.door.remote.verify_unlock`), and only with ``door.remote_unlock = true``.

**Lockout.** ``door.max_denials`` unknown-face denials within
``door.lockout_window_s`` lock the door for ``door.lockout_s``: every
decision is then denied with reason ``lockout``, and a ``lockout`` alarm is
raised. Requests to exit and signed remote unlocks still work (egress is a
safety matter; a remote unlock is an operator's explicit act). The lockout,
and the nonces of accepted remote unlocks, are saved
(:class:`edge.door.state.DoorState`) before they count: a restart ends
neither a lockout nor the uselessness of a captured unlock.

**The relay.** One owner thread (``door-relay``) drives the strike relay;
nothing else touches it, and it never waits on storage or the network (the
``door-audit`` thread writes the records). The controller's constructor creates the relay
output *released* before it does anything else; the owner thread then
energises it for ``door.unlock_s`` per grant and releases it at the deadline.
It is released at once on any exception in the owner thread, on
:meth:`~edge.door.controller.DoorController.release` (the daemon's reload), and on
:meth:`~edge.door.controller.DoorController.stop` (SIGTERM, a failed loop, a watchdog abort).

**Supervision** (the owner thread, from the door contact, request-to-exit
button and tamper switch, each a gpiozero ``Button`` with debounce): the door
opening without a grant or exit request in force is ``door_forced``; open
longer than ``door.held_open_s`` is ``door_held_open``; the tamper switch
gives ``tamper``; the exit button pulses the relay and is logged as
``exit_request``. Their entries are rate-limited and summed up
(:mod:`edge.door.noise`), so a flapping switch never floods the log.

Every clock is injectable (``clock`` for pulses, lockouts and held-open
timers, ``wall`` for decision ages and schedules), so tests need no sleeps.

**The package**, in import order (a module imports only those before it):

* :mod:`~edge.door.entry`: entry kinds, their streams, rows read back (odd ones too);
* :mod:`~edge.door.chain`: the audit log's hash chain and ``facegate audit --verify``;
* :mod:`~edge.door.export`: reading the log out (JSON lines, CSV, ``--since``);
* :mod:`~edge.door.audit`: the append-only audit log (SQLite), one entry per outcome;
* :mod:`~edge.door.policy`: the granting rules and the lockout, pure functions;
* :mod:`~edge.door.state`: what survives a restart (nonces, the lockout);
* :mod:`~edge.door.remote`: signing and verifying remote unlocks, the nonce cache;
* :mod:`~edge.door.pins`: the relay and the inputs through gpiozero;
* :mod:`~edge.door.access`: those rules with their state (replays, lockout,
  nonces, the refusal budget);
* :mod:`~edge.door.noise`: input entries rate-limited and summed up;
* :mod:`~edge.door.record`: one outcome = one audit entry, then one event
  through the :class:`~edge.door.record.EventSink` (never the MQTT transport
  itself), written by their own thread;
* :mod:`~edge.door.supervise`: the inputs (contact, exit, tamper) on the owner thread;
* :mod:`~edge.door.controller`: the owner thread and the relay;
* :mod:`~edge.door.selftest`: ``facegate door test``.

The door's Home Assistant entities are :mod:`edge.homeassistant`'s; its
config rules are :class:`edge.config.DoorConfig`'s.
"""
