"""Test helpers for what a session is charged to: the choices the spawn form offers, and the
job submissions slurmctld received (accepted or refused)."""

from __future__ import annotations

from html.parser import HTMLParser

SUBMISSION = b"_slurm_rpc_submit_batch_job"  # slurmctld logs each, accepted or refused


class FormChoices(HTMLParser):
    """The options of each <select> of a page: name -> [(value, selected)]."""

    def __init__(self, text: str):
        super().__init__()
        self.options: dict[str, list[tuple[str, bool]]] = {}
        self._select: list | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "select":
            self._select = self.options.setdefault(attrs["name"], [])
        elif tag == "option" and self._select is not None:
            self._select.append((attrs["value"], "selected" in attrs))

    def handle_endtag(self, tag):
        if tag == "select":
            self._select = None

    def values(self, name: str) -> list[str]:
        return [value for value, _ in self.options.get(name, [])]

    def selected(self, name: str) -> str | None:
        return next((value for value, chosen in self.options.get(name, []) if chosen), None)


class SlurmSubmissions:
    """Counts the submissions slurmctld receives from now on (its log has a line for each)."""

    def __init__(self, slurm):
        self.log = slurm.slurm_dir / "log" / "slurmctld.log"
        self.start = self.log.stat().st_size

    def count(self) -> int:
        with open(self.log, "rb") as log:
            log.seek(self.start)
            return log.read().count(SUBMISSION)
