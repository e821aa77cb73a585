"""What a configuration reload changes, decided without touching a process (the plan);
supervisor.Supervisor.reload() carries it out.

Keys a running system cannot take (where files and sockets are, how many processes of a
kind, which classifier, the supervisor's own timing and metrics socket) are refused with
"needs a restart". What a kind reads is named in its table entry (actors.Kind.reads);
the fetchers take feed changes in place and keep each feed's ETag, breaker and EDGAR
backoff; any other kind whose settings changed is restarted, draining first, in start
order; the admin sink is rebuilt when it changed; memory limits apply at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

# Paths a reload cannot apply.
NEEDS_RESTART = ("run_dir", "data_dir", "log_dir", "endpoints", "curve", "host", "peers",
                 "supervisor", "console", "llm.provider")
# What a fetcher applies in place (its reconfigure command), without a restart.
IN_PLACE = ("feeds", "poll_interval_s", "sec_user_agent")


@dataclass
class ReloadPlan:
    refused: list[str] = field(default_factory=list)  # paths that need a restart
    reconfigure: set[str] = field(default_factory=set)  # kinds told to apply in place
    restart: set[str] = field(default_factory=set)  # kinds restarted
    admin_sink: bool = False  # the supervisor's admin sink changed
    limits: bool = False  # some kind's max_rss_mb changed

    @property
    def empty(self) -> bool:
        return not (self.reconfigure or self.restart or self.admin_sink or self.limits)


def plan_reload(old, new, reads: dict[str, tuple[str, ...]]) -> ReloadPlan:
    """The plan for moving from config old to new; reads: kind -> the config paths it
    reads (dotted, e.g. "alerts.sinks")."""
    plan = ReloadPlan()
    plan.refused = [path for path in NEEDS_RESTART if changed(old, new, path)]
    for kind in reads:
        before, after = old.actors.get(kind), new.actors.get(kind)
        if (before.instances if before else None) != (after.instances if after else None):
            plan.refused.append(f"actors.{kind}.instances")
        elif before and after and before.max_rss_mb != after.max_rss_mb:
            plan.limits = True
    if plan.refused:
        return plan
    plan.admin_sink = changed(old, new, "alerts.admin")
    for kind, paths in reads.items():
        touched = {path for path in paths if changed(old, new, path)}
        if not touched:
            continue
        if touched <= set(IN_PLACE):
            plan.reconfigure.add(kind)
        else:
            plan.restart.add(kind)
    return plan


def changed(old, new, path: str) -> bool:
    return _get(old, path) != _get(new, path)


def _get(cfg, path: str) -> Any:
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


class Reloader:
    """Carries out a reload on a running supervisor: SIGHUP or `catalyst-supervisor reload`.

    An invalid file or a change that needs a restart is refused, logged and raised as an
    admin event, and the running configuration stays. Otherwise the new configuration is
    the one every (re)spawned actor gets: the kinds whose settings changed are stopped
    gracefully (each finishes what it holds) and come back with it, and only once they all
    run again are the fetchers told the new feeds, so a feed's first poll meets a dedupe
    actor that knows it."""

    def __init__(self, sup):
        self.sup = sup
        self.waiting_for: set[str] = set()  # handles restarted, not yet running again
        self.reconfigure: set[str] = set()  # kinds to tell once they are

    def reload(self) -> dict:
        from actors.errors import CommandError, ConfigError
        from catalyst_config import load_config

        sup = self.sup
        try:
            new = load_config(sup.config.source)
        except ConfigError as exc:
            self._refuse(f"{exc}", "invalid")
            raise CommandError(f"reload refused: {exc}; the running configuration is kept") \
                from None
        plan = plan_reload(sup.config, new, {k.name: k.reads for k in sup.kinds})
        if plan.refused:
            message = (f"{', '.join(plan.refused)} changed, which needs a restart; the "
                       "running configuration is kept")
            self._refuse(message, "needs_restart")
            raise CommandError(f"reload refused: {message}")
        sup.config, sup.sup = new, new.supervisor
        if plan.limits:
            for h in sup.handles.values():
                limits = new.actors.get(h.kind.name)
                h.max_rss_mb = limits.max_rss_mb if limits else h.kind.max_rss_mb
        if plan.admin_sink:
            sup.replace_admin()
        restarted = [h for h in sup.handles.values() if h.kind.name in plan.restart]
        for h in sorted(restarted, key=lambda h: h.kind.start_rank):
            if h.alive:
                sup.stop_actor(h, "reload")
                self.waiting_for.add(h.name)
        self.reconfigure |= plan.reconfigure
        summary = {"restarted": sorted(h.name for h in restarted),
                   "reconfigured": sorted(plan.reconfigure),
                   "admin_sink": plan.admin_sink, "limits": plan.limits}
        if plan.empty:
            logging.getLogger("catalyst.supervisor").info("reload: nothing changed")
        else:
            sup.admin.event("config_reloaded", "supervisor", "reload",
                            f"configuration reloaded from {new.source}: {summary}",
                            level="info")
        self.tick()
        return summary

    def tick(self) -> None:
        """Tells the reconfigured kinds, once every restarted actor runs again."""
        from supervisor.handle import ActorState

        sup = self.sup
        self.waiting_for = {n for n in self.waiting_for
                            if sup.handles[n].state not in (ActorState.RUNNING,
                                                            ActorState.FAILED)}
        if self.waiting_for or not self.reconfigure:
            return
        config = sup.config
        args = {"feeds": [_feed_builtins(f) for f in config.feeds],
                "poll_interval_s": config.poll_interval_s,
                "sec_user_agent": config.sec_user_agent}
        for h in sup.handles.values():
            if h.kind.name in self.reconfigure and h.alive:
                sup.send_command(h, "reconfigure", args=args)
        self.reconfigure = set()

    def _refuse(self, message: str, reason: str) -> None:
        logging.getLogger("catalyst.supervisor").error("reload refused: %s", message)
        self.sup.admin.event("reload_refused", "supervisor", reason,
                             f"reload refused: {message}", level="error")


def _feed_builtins(feed) -> dict:
    import dataclasses

    return {k: v for k, v in dataclasses.asdict(feed).items() if v is not None}
