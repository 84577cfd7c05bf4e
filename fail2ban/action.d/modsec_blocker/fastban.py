"""Ban before the attacker's next request: wake the jail's own ban check as soon as its filter
queues a ticket, and let its filter read a new line as soon as it is written.

fail2ban waits by polling, with sleeps of 0.2, 0.4 ... s between looks (`Utils.wait_for`):

* its actions thread looks for tickets between such sleeps, so a ban comes up to 0.8 s after
  the failure that decided it.  Here the jail's `putFailTicket` (the filter's hand-over) is
  wrapped on the jail object, and the jail's ban check runs at once: fail2ban's own
  `Actions.__checkBan`, the one `fail2ban-client set <jail> banip` already runs from the
  command thread beside the actions thread.  It runs in the filter's thread when every action
  of the jail says its ban() never blocks (`fastban_inline`, as modsec-block's: it queues or
  applies a kernel change), so no hand-over to another thread delays it; else (and for
  tickets others queue, fail2ban's restore) in a thread of ours, blocked on an event while
  nothing happens;
* its pyinotify filter, after half a second without a line, sleeps 0.2 then 0.4 s between
  its waits for inotify events: a line written then is read up to 0.4 s late (the first
  failures after a quiet spell, whatever the load).  Here its inotify notifier's
  `check_events` is wrapped on that object so that a wait that timed out ends the filter's
  wait (it goes round its loop and waits again) instead of making it sleep.

fail2ban stays the authority: its queue, counting, ban list, bantime.increment, database,
unbans and restore are its own, untouched; other jails are not touched at all.

This is the only module that reaches into fail2ban's internals: the names in `unsupported()`
and `_notifier()`, checked when attaching.  Where they are missing (a fail2ban that changed),
nothing is attached, the jail bans on fail2ban's own schedule, and fail2ban's log says so
once.  tests/test_fastban.py runs it on each supported fail2ban and pins the code it relies
on.  Retire it when fail2ban waits on events itself (docs/upstream/: both changes written).
"""
import inspect
import threading
import time
from typing import Dict, Optional, Set

_lock = threading.Lock()
_attached: Dict[int, "Waker"] = {}          # id(jail) -> its waker (one per jail, shared)
_warned: Set[str] = set()                   # jails whose failure to attach was logged


def unsupported(jail) -> Optional[str]:
    """Why the fast path cannot attach to this jail (what fail2ban lacks), or None."""
    actions = getattr(jail, "actions", None)
    check_ban = getattr(actions, "_Actions__checkBan", None)
    if not callable(check_ban):
        return "its Actions has no __checkBan"
    if _parameters(check_ban) != ["tickets"]:
        return f"Actions.__checkBan takes {_parameters(check_ban)}, not (tickets=None)"
    if _parameters(getattr(jail, "putFailTicket", None)) != ["ticket"]:
        return "its Jail has no putFailTicket(ticket)"
    if not isinstance(getattr(type(jail), "hasFailTickets", None), property):
        return "its Jail has no hasFailTickets property"
    if not all(hasattr(actions, name) for name in ("active", "idle")):
        return "its Actions thread has no active/idle flags"
    return None


def _notifier(jail):
    """The pyinotify notifier of the jail's filter (FilterPyinotify makes it when its thread
    starts), None until then, or False when the filter is not a pyinotify one."""
    filter_ = getattr(jail, "filter", None)
    if not hasattr(filter_, "_FilterPyinotify__notifier"):
        return False
    notifier = filter_._FilterPyinotify__notifier
    if notifier is not None and (_parameters(getattr(notifier, "check_events", None)) != ["timeout"]
                                 or not isinstance(getattr(notifier, "_threshold", None), int)):
        return False
    return notifier


class FilterWake:
    """Makes a timed-out wait for inotify events end the filter's wait instead of a sleep: the
    filter goes round its loop and waits again, never deaf to a new line.  Its loop then asks
    the notifier to read events; pyinotify's `_threshold` of 1 byte makes that read return
    when there is nothing (with 0, a read of 0 bytes would block until the next event).  A
    zero timeout (fail2ban checking a missing log at its own pace) is left as it is."""

    def __init__(self, notifier) -> None:
        self.notifier = notifier
        self.threshold = notifier._threshold
        check_events = notifier.check_events

        def hook(timeout=None):
            return check_events(timeout) or bool(timeout)
        self.hook = hook
        notifier._threshold = max(1, self.threshold)
        notifier.check_events = hook

    def remove(self) -> None:
        if self.notifier.__dict__.get("check_events") is self.hook:
            del self.notifier.check_events
            self.notifier._threshold = self.threshold


def _parameters(function) -> list:
    try:
        return list(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return []


def attach(jail, log) -> Optional["Waker"]:
    """Wake `jail`'s ban check when its filter queues a ticket; None (logged once) if fail2ban
    lacks what this needs.  Several actions of one jail share one waker; detach() each."""
    with _lock:
        waker = _attached.get(id(jail))
        if waker is not None and waker.jail is jail:
            waker.users += 1
            return waker
        problem = unsupported(jail)
        if problem is not None:
            if jail.name not in _warned:
                _warned.add(jail.name)
                log.warning("modsec-block: jail %r: no fast ban path on fail2ban %s (%s): it bans at "
                            "fail2ban's own pace, up to 0.8 s after the failure", jail.name, _version(), problem)
            return None
        waker = _attached[id(jail)] = Waker(jail, log)
    waker.start()
    log.info("modsec-block: jail %r: fast ban path attached (bans as soon as the filter queues a ticket)",
             jail.name)
    return waker




def _version() -> str:
    try:
        from fail2ban.version import version
        return str(version)
    except Exception:
        return "(unknown version)"


class Waker:
    """One jail's hand-over hook and the thread that runs its ban check when woken."""

    def __init__(self, jail, log) -> None:
        self.jail, self.log = jail, log
        self.users = 1
        self.actions = jail.actions
        self.filter = getattr(jail, "filter", None)
        self.check_ban = jail.actions._Actions__checkBan
        self.event = threading.Event()
        self.stopping = False
        self.checks = 0                            # ban checks run (tests, benchmarks)
        self.filter_wake: Optional[FilterWake] = None
        self.thread = threading.Thread(target=self._run, name=f"f2b/w.{jail.name}", daemon=True)
        queue = jail.putFailTicket

        def put_fail_ticket(ticket) -> None:
            queue(ticket)
            if threading.current_thread() is self.filter and self._inline():
                self._check()
            else:
                self.event.set()
        self.hook = put_fail_ticket

    def _inline(self) -> bool:
        """Whether the filter's thread may run the ban check itself: no action of the jail
        blocks in ban() (those that say so; anything else runs in our thread)."""
        actions = self.actions
        try:
            return all(getattr(actions[name], "fastban_inline", False) for name in list(actions))
        except Exception:                          # changing under a reload: our thread then
            return False

    def start(self) -> None:
        self.jail.putFailTicket = self.hook        # on this jail object only
        self.thread.start()

    def detach(self) -> None:
        """Undo attach() (when its last user detaches): the jail's own putFailTicket again."""
        with _lock:
            self.users -= 1
            if self.users > 0:
                return
            if _attached.get(id(self.jail)) is self:
                del _attached[id(self.jail)]
        if self.jail.__dict__.get("putFailTicket") is self.hook:
            del self.jail.putFailTicket
        self.stopping = True
        self.event.set()
        if self.thread is not threading.current_thread():
            self.thread.join(30)
        if self.filter_wake is not None:
            self.filter_wake.remove()
        self.log.info("modsec-block: jail %r: fast ban path detached", self.jail.name)

    def _run(self) -> None:
        _name_thread(self.thread.name)
        self._wake_filter()
        while True:
            self.event.wait()                      # no timeout: no wake-up while nothing happens
            if self.stopping:
                return
            self.event.clear()
            self._check()

    def _wake_filter(self) -> None:
        """Hook the filter's notifier once its thread made it (it starts before the actions)."""
        for _ in range(200):
            notifier = _notifier(self.jail)
            if self.stopping:
                return
            if notifier is False:
                self.log.info("modsec-block: jail %r: its filter does not wait with pyinotify: it reads "
                              "new lines on its own schedule", self.jail.name)
                return
            if notifier is not None:
                self.filter_wake = FilterWake(notifier)
                self.log.info("modsec-block: jail %r: its pyinotify filter reads a new line at once",
                              self.jail.name)
                return
            time.sleep(0.05)
        self.log.warning("modsec-block: jail %r: its filter made no inotify notifier in 10 s: it reads "
                         "new lines on its own schedule", self.jail.name)

    def _check(self) -> None:
        """Run the jail's ban check while its queue holds tickets (it takes a few per call), as
        long as the jail's actions run and are not idle (then they wait, as fail2ban does)."""
        actions = self.actions
        while not self.stopping and actions.active and not actions.idle and self.jail.hasFailTickets:
            try:
                self.check_ban()
            except Exception as e:                 # the actions thread still bans: never die
                self.log.error("modsec-block: jail %r: fast ban check failed: %s", self.jail.name, e)
                return
            self.checks += 1


def _name_thread(name: str) -> None:
    """The thread's name in `top -H` and /proc (as fail2ban names its own threads)."""
    try:
        from fail2ban.helpers import prctl_set_th_name
        prctl_set_th_name(name)
    except Exception:
        pass
