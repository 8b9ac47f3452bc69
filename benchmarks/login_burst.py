"""Many users signing in through the identity provider and opening the spawn form.

The load generator is one asyncio process (aiohttp): 200 concurrent browsers
in Python threads would spend most of their time waiting for the GIL, and
that wait would show up as "hub response time".  Each simulated browser has
its own cookie jar and connections and follows redirects itself, so every
request is timed on its own and attributed to the hub or to the identity
provider.  Beside the client-side times, the hub's own time per request is
read from its log (JupyterHub logs every request's duration), and the CPU
seconds each process used during the round are read from /proc.  Hubs are compared in
paired rounds (:func:`paired_rounds`): the same users on each hub in turn, the order turning
from round to round, so that what else the machine does hits each of them alike.
"""

from __future__ import annotations

import asyncio
import html
import os
import re
import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import urljoin

import aiohttp

LOGIN_FORM = re.compile(r'<form[^>]*id="login-form"[^>]*action="([^"]+)"')
# [I 2026-11-25 02:06:52.310 JupyterHub log:192] 200 GET /hub/spawn (gwl194@127.0.0.1) 168.92ms
HUB_REQUEST = re.compile(
    r"^\[\w (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) JupyterHub log:\d+\] "
    r"(\d{3}) (\w+) (\S+).*\((\S*)@[^)]*\) ([\d.]+)ms$"
)


def page_message(body: str) -> str:
    """The message of a hub error page (what the user would read)."""
    match = re.search(r'<div class="error">.*?<p>(.*?)</p>', body, re.S)
    return html.unescape(re.sub(r"<[^>]+>|\s+", " ", match.group(1))).strip()[:200] if match else ""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))] if ordered else float("nan")


@dataclass
class Timing:
    """One request as the client saw it."""

    side: str  # "hub" or "idp"
    route: str
    status: int
    seconds: float


@dataclass
class Browser:
    """One user's browser: its own cookies and connections, redirects followed by hand."""

    hub_url: str
    username: str
    password: str
    timings: list[Timing] = field(default_factory=list)

    async def _get(self, http: aiohttp.ClientSession, url: str, **kwargs):
        return await self._request(http, "GET", url, **kwargs)

    async def _request(self, http, method: str, url: str, **kwargs):
        side = "hub" if url.startswith(self.hub_url) else "idp"
        started = time.monotonic()
        async with http.request(method, url, allow_redirects=False, **kwargs) as response:
            body = await response.text()
        self.timings.append(Timing(side, url.split("?")[0].removeprefix(self.hub_url),
                                   response.status, time.monotonic() - started))
        return response, body

    async def _follow(self, http, response, body):
        """Follow redirects as a browser does; the last response and its body."""
        for _ in range(20):
            if response.status not in (301, 302, 303, 307):
                return response, body
            url = urljoin(str(response.url), response.headers["Location"])
            response, body = await self._get(http, url)
        raise RuntimeError(f"too many redirects at {response.url}")

    async def sign_in_and_open_form(self, timeout: float) -> None:
        # A browser accepts cookies from 127.0.0.1; aiohttp's default jar does not.
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(
            cookie_jar=jar, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as http:
            response, body = await self._get(http, f"{self.hub_url}/hub/login")
            if response.status != 200 or "oauth_login" not in body:
                raise RuntimeError(f"login page {response.status}")
            response, body = await self._follow(
                http, *await self._get(http, f"{self.hub_url}/hub/oauth_login"))
            match = LOGIN_FORM.search(body)
            if not match:
                raise RuntimeError(f"no login form at {response.url}: {response.status}")
            response, body = await self._follow(http, *await self._request(
                http, "POST", urljoin(str(response.url), html.unescape(match.group(1))),
                data={"username": self.username, "password": self.password}))
            if response.status != 200 or not str(response.url).startswith(self.hub_url):
                raise RuntimeError(f"sign-in ended at {str(response.url).split('?')[0]}: "
                                   f"{response.status} {page_message(body)}")
            # After sign-in the hub sends a user without a session to the spawn
            # form; open it if it sent this one elsewhere.
            if 'name="profile"' not in body:
                response, body = await self._get(http, f"{self.hub_url}/hub/spawn")
            if response.status != 200 or 'name="profile"' not in body:
                raise RuntimeError(f"spawn form {response.status}")


@dataclass
class RoundResult:
    users: int
    elapsed: float
    errors: list[str]
    timings: list[Timing]
    login_seconds: list[float]  # per user: first request to spawn form shown
    started_wall: float
    ended_wall: float

    def times(self, side: str) -> list[float]:
        return [t.seconds for t in self.timings if t.side == side]


async def _round(hub_url: str, users: list[str], password_of, ramp: float,
                 timeout: float) -> RoundResult:
    started = time.monotonic()
    started_wall = time.time()
    errors: list[str] = []
    timings: list[Timing] = []
    login_seconds: list[float] = []

    async def arrive(i: int, user: str) -> None:
        await asyncio.sleep(max(0.0, started + i * ramp / len(users) - time.monotonic()))
        browser = Browser(hub_url, user, password_of(user))
        began = time.monotonic()
        try:
            await browser.sign_in_and_open_form(timeout)
            login_seconds.append(time.monotonic() - began)
        except Exception as exc:  # noqa: BLE001 - every failure counts as an error
            errors.append(f"{user}: {type(exc).__name__}: {exc}")
        timings.extend(browser.timings)

    await asyncio.gather(*(arrive(i, u) for i, u in enumerate(users)))
    return RoundResult(len(users), time.monotonic() - started, errors, timings,
                       login_seconds, started_wall, time.time())


def login_round(hub_url: str, users: list[str], password_of, ramp: float = 0,
                timeout: float = 60) -> RoundResult:
    """All ``users`` sign in and open the spawn form, at once (``ramp`` 0) or with
    arrivals spread evenly over ``ramp`` seconds."""
    return asyncio.run(_round(hub_url, users, password_of, ramp, timeout))


def hub_request_times(log: Path, since: float, until: float, users: set[str]) -> dict[str, list[float]]:
    """The hub's own duration (seconds) of each request of ``users`` (or anonymous:
    the login pages before a user is known) logged between ``since`` and ``until``,
    by route."""
    begin = datetime.fromtimestamp(since).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    end = datetime.fromtimestamp(until + 1).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    routes: dict[str, list[float]] = {}
    with open(log, errors="replace") as lines:
        for line in lines:
            match = HUB_REQUEST.match(line.rstrip("\n"))
            if not match:
                continue
            stamp, _status, method, path, who, ms = match.groups()
            if not begin <= stamp <= end or (who and who not in users):
                continue
            routes.setdefault(f"{method} {path.split('?')[0]}", []).append(float(ms) / 1000)
    return routes


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process so far (0 if it is gone)."""
    if not pid:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all cores of this machine have spent busy so far."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used by named processes (and by the whole machine, other
    people's work included) within a ``with`` block."""

    def __init__(self, pids: dict[str, int | None]):
        self.pids = pids
        self.used: dict[str, float] = {}

    def __enter__(self) -> CpuMeter:
        self._before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._own = os.times()
        self._machine = machine_busy_seconds()
        return self

    def __exit__(self, *exc) -> None:
        self.used = {name: cpu_seconds(pid) - self._before[name]
                     for name, pid in self.pids.items()}
        own = os.times()
        self.used["load generator"] = (own.user - self._own.user) + (own.system - self._own.system)
        self.used["whole machine"] = machine_busy_seconds() - self._machine


def summary(result: RoundResult, hub_times: dict[str, list[float]], cpu: dict[str, float]) -> list[str]:
    hub = result.times("hub")
    idp = result.times("idp")
    server = [s for times in hub_times.values() for s in times]
    ms = lambda s: f"{s * 1000:.0f} ms"  # noqa: E731
    lines = [
        f"hub responses {len(hub)} (client side): p50 {ms(statistics.median(hub))}, "
        f"p95 {ms(percentile(hub, 0.95))}; errors {len(result.errors)}; "
        f"{result.elapsed:.1f} s in all",
        f"hub's own time per request ({len(server)} logged): p50 {ms(statistics.median(server))}, "
        f"p95 {ms(percentile(server, 0.95))}" if server else "hub's own times: none logged",
    ]
    for route, times in sorted(hub_times.items(), key=lambda kv: -sum(kv[1])):
        lines.append(f"    {route}: {len(times)}, p50 {ms(statistics.median(times))}, "
                     f"p95 {ms(percentile(times, 0.95))}")
    if idp:
        lines.append(f"identity provider responses {len(idp)}: p50 {ms(statistics.median(idp))}, "
                     f"p95 {ms(percentile(idp, 0.95))}")
    if result.login_seconds:
        lines.append(f"whole sign-in to spawn form per user: p50 "
                     f"{statistics.median(result.login_seconds):.2f} s, p95 "
                     f"{percentile(result.login_seconds, 0.95):.2f} s")
    ours = sum(s for name, s in cpu.items() if name != "whole machine")
    lines.append("CPU seconds used: " + ", ".join(f"{name} {s:.1f}" for name, s in cpu.items())
                 + f" (other people's work: {max(0.0, cpu.get('whole machine', 0) - ours):.1f})")
    # The hub is one process with one event loop: its CPU time is serial work.
    lines.append(f"hub CPU per sign-in {cpu.get('hub', 0) / result.users * 1000:.0f} ms; "
                 f"serial hub work for all {result.users}: {cpu.get('hub', 0):.1f} s; all our "
                 f"processes' work spread over {os.cpu_count()} cores: "
                 f"{ours / os.cpu_count():.1f} s")
    return lines


@dataclass
class LoginHub:
    """One hub of a paired run: where users sign in, its log, the processes whose CPU counts."""

    name: str
    url: str
    log: Path
    pids: dict[str, int | None]


@dataclass
class HubRound:
    """One hub's round of a paired run; cycle 0 is the users' first sign-in there."""

    hub: str
    cycle: int
    arrivals: float
    result: RoundResult
    cpu: dict[str, float]

    @property
    def p95(self) -> float:
        """The p95 of the hub's responses as the browsers saw them: the figure compared."""
        return percentile(self.result.times("hub"), 0.95)

    @property
    def sign_in_p95(self) -> float:
        return percentile(self.result.login_seconds, 0.95)

    @property
    def hub_cpu_per_sign_in(self) -> float:
        return self.cpu.get("hub", 0.0) / self.result.users

    @property
    def others_share(self) -> float:
        """The part of the machine's CPU that other people's work took during the round."""
        ours = sum(s for name, s in self.cpu.items() if name != "whole machine")
        capacity = self.result.elapsed * (os.cpu_count() or 1)
        return max(0.0, self.cpu.get("whole machine", 0.0) - ours) / capacity


def measured_round(hub: LoginHub, users: list[str], password_of, arrivals: float,
                   cycle: int) -> tuple[HubRound, dict[str, list[float]]]:
    """One round on one hub, with the CPU each process used and the hub's own times."""
    with CpuMeter(hub.pids) as cpu:
        result = login_round(hub.url, users, password_of, arrivals)
    server = hub_request_times(hub.log, result.started_wall, result.ended_wall, set(users))
    return HubRound(hub.name, cycle, arrivals, result, cpu.used), server


def _arrivals_label(arrivals: float) -> str:
    return f"arriving over {arrivals:.0f} s" if arrivals else "all at once"


def paired_rounds(hubs: list[LoginHub], users: list[str], password_of, ramps: list[float],
                  cycles: int, first_ramp: float, show=print) -> list[HubRound]:
    """The same users sign in on each hub in turn, round after round, so that what else the
    machine does hits every hub alike: first each user's first sign-in (cycle 0), then
    ``cycles`` cycles of one round per hub per ramp.  The order of the hubs turns from one
    round to the next (A B, B A, ...), so no hub always goes first."""
    rounds: list[HubRound] = []
    plan = [(0, first_ramp)] + [(cycle, arrivals) for cycle in range(1, cycles + 1)
                                for arrivals in ramps]
    for turn, (cycle, arrivals) in enumerate(plan):
        shift = turn % len(hubs)
        label = "first sign-in" if cycle == 0 else f"cycle {cycle}"
        figures = []
        for hub in hubs[shift:] + hubs[:shift]:
            done, server = measured_round(hub, users, password_of, arrivals, cycle)
            rounds.append(done)
            show(f"  {hub.name}, {label}, {len(users)} users {_arrivals_label(arrivals)} "
                 f"(load average before: {Path('/proc/loadavg').read_text().split()[0]}):")
            for line in summary(done.result, server, done.cpu):
                show(f"    {line}")
            for error in done.result.errors[:3]:
                show(f"    error: {error}")
            figures.append(f"{hub.name} {done.p95 * 1000:.0f} ms")
        show(f"  => {label}, {_arrivals_label(arrivals)}: hub responses p95 "
             + ", ".join(figures))
    return rounds


def ratio_lines(rounds: list[HubRound], baseline: str, goal: float | None = None) -> list[str]:
    """Per hub and ramp: each cycle's p95 against the baseline's in the same cycle, their
    median and the worst; the same for the hub's CPU per sign-in."""
    by_key = {(r.hub, r.cycle, r.arrivals): r for r in rounds}
    hubs = list(dict.fromkeys(r.hub for r in rounds))
    ramps = list(dict.fromkeys(r.arrivals for r in rounds if r.cycle > 0))
    lines = []
    for arrivals in ramps:
        for hub in hubs:
            if hub == baseline:
                continue
            pairs = [(r, by_key[(baseline, r.cycle, arrivals)]) for r in rounds
                     if r.hub == hub and r.cycle > 0 and r.arrivals == arrivals]
            p95s = [mine.p95 / base.p95 for mine, base in pairs]
            cpus = [mine.hub_cpu_per_sign_in / base.hub_cpu_per_sign_in for mine, base in pairs]
            errors = sum(len(mine.result.errors) + len(base.result.errors) for mine, base in pairs)
            verdict = "" if goal is None else (
                f" (goal <= {goal:.2f}: {'met' if max(p95s) <= goal else 'NOT met'} by the "
                f"worst, {'met' if statistics.median(p95s) <= goal else 'NOT met'} by the median)")
            lines += [
                f"{hub}/{baseline}, {_arrivals_label(arrivals)}: hub responses p95 per cycle "
                + ", ".join(f"{mine.p95 * 1000:.0f}/{base.p95 * 1000:.0f} ms" for mine, base in pairs),
                f"    ratios {', '.join(f'{x:.3f}' for x in p95s)}: median {statistics.median(p95s):.3f}, "
                f"worst {max(p95s):.3f}{verdict}",
                f"    hub CPU per sign-in ratios {', '.join(f'{x:.3f}' for x in cpus)}: "
                f"median {statistics.median(cpus):.3f}; errors in these rounds: {errors}",
            ]
    first = {r.hub: r for r in rounds if r.cycle == 0}
    if baseline in first and len(first) > 1:
        lines.append("first sign-in: hub responses p95 " + ", ".join(
            f"{hub} {r.p95 * 1000:.0f} ms ({r.p95 / first[baseline].p95:.3f} of {baseline}'s)"
            for hub, r in first.items()))
    shares = sorted(r.others_share for r in rounds)
    lines.append(f"other people's work during the rounds: {shares[0]:.0%} to {shares[-1]:.0%} of "
                 f"the machine's {os.cpu_count()} cores (median {statistics.median(shares):.0%})")
    return lines
