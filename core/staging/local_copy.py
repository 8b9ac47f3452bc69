"""Copying many small local files, verified, in worker processes.

A staged OME-Zarr from local disk is thousands of chunk files of a few hundred bytes; there the
time goes in system calls and interpreter steps, not bytes. One Python process (and its threads,
which share one interpreter lock) reaches about half of ``cp -r``'s rate; worker processes copy
folders side by side, as many as the CPUs this process may use (at most ``MAX_WORKERS``).

A worker is this file run by the same interpreter with ``-I -S`` (the standard library only,
nothing from the environment: it starts in ~20 ms). It reads one job per line on stdin (JSON):
a run of new folders to fill, each with its files' source paths, names and sizes. For each
folder it makes ``<folder>.part-<pid>``, copies and verifies every file into it and renames it
into place when all are verified, answering with the folder's journal record; otherwise it
answers with what it verified and what it left (for the caller's ordinary path, with its
retries and error messages), or the error that stopped it (a full disk). The caller writes the
journal records. When the caller goes (even ``kill -9``) the kernel kills its workers
(``PR_SET_PDEATHSIG``; the transfer's calling thread starts them and outlives them), so that
none races the next stage of the same data: what one wrote has a ``.part-`` name, which the
next stage removes, or is a folder in place without its journal record, which the next stage
fetches again file by file.
"""

from __future__ import annotations

import binascii
import errno
import hashlib
import json
import os
import subprocess
import sys
import threading

MAX_WORKERS = 8
MIN_FILES = 512  # fewer than this: copied in the calling process (starting workers costs more)


def copy_files(sources: list[str], folder: str, names: list[str], sizes: list[int]):
    """Copy ``sources[i]`` to ``folder + names[i]`` (a new file), each verified: the source's
    size is ``sizes[i]`` before and after the read, its modification time did not change while
    it was read, the read returned exactly that many bytes (so the file ended there) and the
    ``write`` took them all.

    Returns ``(done, left, error)``: ``done`` is ``[(i, "sha2:<base64>"), ...]`` of the verified
    files, ``left`` the indexes this loop did not take (another size, a file that changed, an
    unreadable one); ``error`` is the ``OSError`` that stopped the loop while writing (a full
    disk), else None.

    Per file: open, ``fstat``, one ``read`` of one byte more than its size, ``fstat``, close;
    create the copy, one ``write``, close; SHA-256 of the bytes (the fewest steps that still
    verify it)."""
    done, left = [], []
    sha256, b64 = hashlib.sha256, binascii.b2a_base64  # base64.b64encode without its Python frame
    open_, read, write, close, fstat = os.open, os.read, os.write, os.close, os.fstat
    reading = os.O_RDONLY | os.O_CLOEXEC
    writing = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC  # never through a link
    for i, path in enumerate(sources):
        size = sizes[i]
        try:
            src = open_(path, reading)
        except OSError:
            left.append(i)
            continue
        try:
            before = fstat(src)
            data = read(src, size + 1) if before.st_size == size else None
            after = fstat(src)
        except OSError:
            data = None
        finally:
            close(src)
        if (data is None or len(data) != size or after.st_size != size
                or after.st_mtime_ns != before.st_mtime_ns):
            left.append(i)
            continue
        try:
            dst = open_(folder + names[i], writing, 0o600)
            try:
                written = write(dst, data)
            finally:
                close(dst)
        except OSError as exc:
            left.extend(range(i, len(sources)))
            return done, left, exc
        if written != size:
            left.append(i)
            continue
        done.append((i, "sha2:" + b64(sha256(data).digest(), newline=False).decode()))
    return done, left, None


def folder_record(folder: str, objects: list) -> bytes:
    """The staging journal's record of a folder filled whole: ``objects`` are
    ``[name, size, sha2]`` (``transfer.Journal`` reads it)."""
    return (json.dumps({"dir": folder, "objects": objects}, separators=(",", ":")) + "\n").encode()


def fill_folders(jobs: list, check_existing: bool = False) -> list:
    """Fill each new folder whole, ``jobs`` being ``[part_dir, final_dir, folder, names, sizes,
    sources]``: make ``part_dir``, copy every file into it (``copy_files``) and, when every one
    is verified, rename it to ``final_dir``. One answer per job:

    * ``["renamed", record]``: the folder is in place; ``record`` is its journal record (text);
    * ``["partial", done, left]``: ``part_dir`` holds the verified files ``done`` (``[i, sha2]``),
      the caller takes ``left`` (indexes) and the folder from there;
    * ``["unmade", error]``: ``part_dir`` could not be made (the caller goes file by file);
    * ``["error", error]``: writing failed (a full disk): the caller removes ``part_dir``;
      the folders after it are ``["skipped"]``.

    ``error`` is ``[errno, message, filename]``. ``check_existing``: a folder that exists already
    (a worker that died had renamed it) is ``unmade`` too."""
    answers = []
    for n, (part_dir, final_dir, folder, names, sizes, sources) in enumerate(jobs):
        if check_existing and os.path.lexists(final_dir):
            answers.append(["unmade", [errno.EEXIST, "exists", final_dir]])
            continue
        try:
            try:
                os.mkdir(part_dir)
            except FileExistsError:  # left by a killed run with the same process id
                import shutil
                shutil.rmtree(part_dir)
                os.mkdir(part_dir)
        except OSError as exc:
            answers.append(["unmade", _error(exc)])
            continue
        done, left, error = copy_files(sources, part_dir + "/", names, sizes)
        if error is None and not left:
            try:
                os.rename(part_dir, final_dir)
            except OSError as exc:
                error = exc
            else:
                answers.append(["renamed", folder_record(folder, [[names[i], sizes[i], digest]
                                                                  for i, digest in done]).decode()])
                continue
        if error is not None:
            answers.append(["error", _error(error)])
            answers.extend(["skipped"] for _ in jobs[n + 1:])
            break
        answers.append(["partial", done, left])
    return answers


def _error(exc: OSError) -> list:
    return [exc.errno, exc.strerror or str(exc), exc.filename]


def worker_count() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cpus))


class LocalCopyPool:
    """Worker processes running ``fill_folders``; ``fill`` is called from the transfer's threads,
    each taking a free worker (or waiting for one). A worker that fails (it died, it answered
    nonsense) is dropped and the job done in the calling thread instead."""

    def __init__(self, workers: int):
        self._free: list[subprocess.Popen] = []
        self._all: list[subprocess.Popen] = []
        self._cond = threading.Condition()
        for _ in range(workers):
            try:
                proc = subprocess.Popen([sys.executable, "-I", "-S", os.path.abspath(__file__), str(os.getpid())],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
            except OSError:
                break
            self._all.append(proc)
            self._free.append(proc)

    def __len__(self) -> int:
        return len(self._all)

    def fill(self, jobs: list) -> list:
        """``fill_folders(jobs)`` in a worker process."""
        with self._cond:
            while not self._free and any(p.poll() is None for p in self._all):
                self._cond.wait(1.0)
            proc = self._free.pop() if self._free else None
        if proc is None:  # every worker is gone
            return fill_folders(jobs)
        ok = False
        try:
            proc.stdin.write(json.dumps(jobs).encode() + b"\n")
            proc.stdin.flush()
            answers = json.loads(proc.stdout.readline())
            if not isinstance(answers, list) or len(answers) != len(jobs):
                raise ValueError("not one answer per folder")
            ok = True
            return answers
        except (OSError, ValueError):
            # The worker died or garbled its answer: the folders are done here (what it left in
            # a part_dir is removed first; one it had already renamed goes file by file).
            return fill_folders(jobs, check_existing=True)
        finally:
            with self._cond:
                if ok:
                    self._free.append(proc)
                else:
                    self._all.remove(proc)
                    proc.kill()
                    proc.wait()
                self._cond.notify()

    def close(self) -> None:
        for proc in self._all:
            try:
                proc.stdin.close()
            except OSError:
                pass
        for proc in self._all:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        self._all = self._free = []


def _serve() -> None:
    """The worker: one job per line on stdin, one answer per line on stdout."""
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        out.write(json.dumps(fill_folders(json.loads(line))).encode() + b"\n")
        out.flush()


def _die_with(parent: int) -> None:
    """Killed with the stage that started it (``PR_SET_PDEATHSIG``), even by ``kill -9``: a worker
    carrying on with its folders would race the next stage of the same data."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # it went before that took effect
        os._exit(0)


if __name__ == "__main__":
    _die_with(int(sys.argv[1]))
    try:
        _serve()
    except (BrokenPipeError, KeyboardInterrupt):  # the caller went away
        pass
